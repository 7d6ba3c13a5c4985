//! Per-workspace rate limits (SPEC section 4): four token buckets per workspace, created on
//! first use, overridable by the workspace's secrets.
//!
//! Work over a limit waits for its tokens; it is never refused. Each workspace gets its own
//! buckets so that one noisy workspace cannot slow another. The registry maps a workspace
//! name to an `Arc` of its buckets, so a caller looks a workspace up once and then acquires
//! tokens without touching the registry, its locks, or the allocator.
//!
//! The GCRA arithmetic is governor's; `bucket` adds the fair waiting line, [`values`] the
//! rules every rate and burst obeys, `secrets` the per-workspace overrides, and [`clock`] the
//! injectable time source that makes the tests exact.

mod bucket;
pub mod clock;
pub mod cluster;
pub mod named;
mod recent;
mod secrets;
pub mod values;

pub use crate::budgets::{BudgetError, BudgetExceeded, Budgets};
pub use clock::{FakeClock, TimeSource};
pub use recent::WINDOW as RECENT_WAITS;
pub use secrets::LimitError;
pub(crate) use secrets::PREFIX as RATE_LIMIT_SECRET_PREFIX;
pub use values::{LimitSettings, RateSetting};

use crate::value::Value;
use bucket::Bucket;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use governor::clock::Clock;
use governor::Quota;
use indexmap::IndexMap;
use recent::RecentWaits;
use secrets::Overrides;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A wait longer than this is logged at `info` rather than `debug`: it is long enough for a
/// user to notice.
const NOTICEABLE_WAIT: Duration = Duration::from_millis(10);

/// What a token pays for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// One automation execution, whatever triggered it.
    Automations,
    /// One `emit` instruction.
    Emits,
    /// One `fetch` instruction.
    Fetchs,
    /// One `repeat` iteration.
    Repeats,
}

impl LimitKind {
    /// Every kind, in a fixed order.
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Automations,
        LimitKind::Emits,
        LimitKind::Fetchs,
        LimitKind::Repeats,
    ];

    /// The name used in settings keys, secrets, logs and metrics: `"automations"` etc.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Automations => "automations",
            LimitKind::Emits => "emits",
            LimitKind::Fetchs => "fetchs",
            LimitKind::Repeats => "repeats",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_name(name: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The limiters of every workspace of this process; clones share them.
#[derive(Clone)]
pub struct Limiters(Arc<Registry>);

struct Registry {
    time: TimeSource,
    /// `RATE_LIMIT_DISABLED`: no secret can turn a limit back on.
    disabled: bool,
    /// The environment's rates and bursts, which secrets override one value at a time.
    defaults: LimitSettings,
    /// The quotas of a workspace without overrides; `None` is no limit.
    default_quotas: [Option<Quota>; 4],
    workspaces: DashMap<Arc<str>, Arc<WorkspaceState>>,
    /// What waiting has cost so far, for progress displays.
    log: Arc<ThrottleLog>,
    /// Each workspace's waits of the last five minutes (written only by waits).
    recent: DashMap<Arc<str>, Arc<RecentWaits>>,
}

/// What the waits on each kind of limit have cost so far in this process. Written only by
/// callers that had to wait (never on the uncontended path), read by a progress display
/// (`sluice run` prints a line while an execution is held back).
#[derive(Default)]
struct ThrottleLog {
    kinds: [KindLog; 4],
}

#[derive(Default)]
struct KindLog {
    /// Nanoseconds of the waits that are over.
    waited: AtomicU64,
    /// Waits in progress.
    waiting: AtomicU64,
    /// When the waits in progress began (the clock's nanoseconds), valid while `waiting > 0`.
    since: AtomicU64,
}

/// One wait in progress, recorded in its kind's log until dropped (done or cancelled).
struct WaitRecord<'a> {
    log: &'a KindLog,
    time: &'a TimeSource,
    start: governor::nanos::Nanos,
}

impl<'a> WaitRecord<'a> {
    fn begin(log: &'a KindLog, time: &'a TimeSource) -> WaitRecord<'a> {
        let start = time.now();
        if log.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            log.since.store(start.as_u64(), Ordering::Release);
        }
        WaitRecord { log, time, start }
    }
}

impl Drop for WaitRecord<'_> {
    fn drop(&mut self) {
        let waited = self.time.since(self.start);
        let nanos = clock::nanos(waited);
        self.log.waited.fetch_add(nanos, Ordering::AcqRel);
        self.log.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

struct WorkspaceState {
    name: Arc<str>,
    /// The registry's log of waits (timed on the buckets' clock, the registry's).
    log: Arc<ThrottleLog>,
    /// `None` where that kind is not limited.
    buckets: [Option<Arc<Bucket>>; 4],
    /// The quotas before `slow`: what secrets and settings give.
    base: [Option<Quota>; 4],
    /// The factor on every rate set by a credit-quota band (1 is full speed).
    slow: f64,
    /// Set when secrets override a limit: such state must outlive idleness.
    overridden: bool,
}

impl Limiters {
    /// Limiters on the real clock, with `defaults` for every workspace.
    pub fn new(defaults: &LimitSettings) -> Limiters {
        Limiters::with_time(defaults, TimeSource::real())
    }

    /// Limiters on simulated time, for tests.
    pub fn with_clock(defaults: &LimitSettings, clock: FakeClock) -> Limiters {
        Limiters::with_time(defaults, TimeSource::fake(clock))
    }

    fn with_time(defaults: &LimitSettings, time: TimeSource) -> Limiters {
        let default_quotas = LimitKind::ALL.map(|kind| {
            if defaults.disabled {
                return None;
            }
            let setting = defaults.get(kind);
            values::quota(setting.rate, setting.burst).unwrap_or_else(|problem| {
                // `Settings::load` refuses such values, so only code that builds settings by
                // hand gets here; keeping the built-in limit is safer than no limit.
                tracing::error!(limit = kind.as_str(), %problem, "invalid default limit, using the built-in one");
                let builtin = LimitSettings::default().get(kind);
                values::quota(builtin.rate, builtin.burst).ok().flatten()
            })
        });
        Limiters(Arc::new(Registry {
            time,
            disabled: defaults.disabled,
            defaults: defaults.clone(),
            default_quotas,
            workspaces: DashMap::new(),
            log: Arc::default(),
            recent: DashMap::new(),
        }))
    }

    /// The clock of these limiters, for the named limits to share.
    pub fn time(&self) -> TimeSource {
        self.0.time.clone()
    }

    /// How far a test's simulated time has moved (zero on the real clock).
    pub fn simulated(&self) -> Duration {
        self.0.time.simulated()
    }

    /// The limits of workspace `ws`, created with full buckets on first use. Take a fresh
    /// handle per execution: a handle keeps the limits it was taken with.
    pub fn workspace(&self, ws: &str) -> WorkspaceLimits {
        if let Some(state) = self.0.workspaces.get(ws).map(|s| Arc::clone(s.value())) {
            return WorkspaceLimits(state);
        }
        let name: Arc<str> = Arc::from(ws);
        let state = self
            .0
            .workspaces
            .entry(Arc::clone(&name))
            .or_insert_with(|| {
                Arc::new(self.0.state(name, self.0.default_quotas, false, 1.0, None))
            })
            .value()
            .clone();
        WorkspaceLimits(state)
    }

    /// Applies the `prismeai_ratelimit_*` secrets of `ws`: they override the defaults for this
    /// workspace only, and a key that is gone returns its limit to the default. On any bad
    /// value nothing changes and every problem is returned. A limit whose quota changes gets
    /// a new, full bucket; the others keep their state.
    pub fn apply_secrets(
        &self,
        ws: &str,
        secrets: &IndexMap<String, Value>,
    ) -> Result<(), Vec<LimitError>> {
        let overrides = Overrides::read(ws, secrets)?;
        let quotas = self.0.quotas(ws, &overrides)?;
        let overridden = !overrides.is_empty();
        match self.0.workspaces.entry(Arc::from(ws)) {
            Entry::Occupied(mut entry) => {
                let old = entry.get();
                if old.overridden == overridden && old.base == quotas {
                    return Ok(());
                }
                log_changes(ws, old.base, quotas);
                let name = Arc::clone(&old.name);
                let new = self.0.state(name, quotas, overridden, old.slow, Some(old));
                entry.insert(Arc::new(new));
            }
            Entry::Vacant(entry) => {
                // Without overrides the workspace gets the defaults on first use anyway.
                if overridden {
                    log_changes(ws, self.0.default_quotas, quotas);
                    let name = Arc::clone(entry.key());
                    entry.insert(Arc::new(self.0.state(name, quotas, true, 1.0, None)));
                }
            }
        }
        Ok(())
    }

    /// Multiplies the four rates of `ws` by `slow` (a credit-quota band's factor; 1 restores
    /// them). A rate that changes gets a new, full bucket, as with secrets.
    pub fn set_slow(&self, ws: &str, slow: f64) {
        let slow = if slow > 0.0 && slow <= 1.0 { slow } else { 1.0 };
        match self.0.workspaces.entry(Arc::from(ws)) {
            Entry::Occupied(mut entry) => {
                let old = entry.get();
                if old.slow == slow {
                    return;
                }
                tracing::info!(
                    workspace = ws,
                    from = old.slow,
                    to = slow,
                    "built-in rates scaled by the credit quota"
                );
                let new = self.0.state(
                    Arc::clone(&old.name),
                    old.base,
                    old.overridden,
                    slow,
                    Some(old),
                );
                entry.insert(Arc::new(new));
            }
            Entry::Vacant(entry) => {
                if slow < 1.0 {
                    tracing::info!(
                        workspace = ws,
                        to = slow,
                        "built-in rates scaled by the credit quota"
                    );
                    let name = Arc::clone(entry.key());
                    let state = self.0.state(name, self.0.default_quotas, false, slow, None);
                    entry.insert(Arc::new(state));
                }
            }
        }
    }

    /// Counts a wait of `waited` on `kind` in `ws`'s recent waits (the operator page's
    /// "throttled over the last 5 minutes"). Called only after a wait.
    pub fn record_wait(&self, ws: &str, kind: LimitKind, waited: Duration) {
        let now = self.0.time.now().as_u64();
        if let Some(recent) = self.0.recent.get(ws) {
            recent.add(kind, waited, now);
            return;
        }
        let recent = Arc::clone(self.0.recent.entry(Arc::from(ws)).or_default().value());
        recent.add(kind, waited, now);
    }

    /// How long `ws` waited on `kind` over the last five minutes ([`RECENT_WAITS`]).
    pub fn recent_waits(&self, ws: &str, kind: LimitKind) -> Duration {
        let now = self.0.time.now().as_u64();
        self.0
            .recent
            .get(ws)
            .map_or(Duration::ZERO, |r| r.sum(kind, now))
    }

    /// Forgets workspaces that nothing holds, that have no overrides, and whose buckets are
    /// full again, so memory follows the active workspaces. Their next use starts full,
    /// exactly as they were. Call it periodically.
    pub fn retain_recent(&self) {
        let now = self.0.time.now();
        let before = self.0.workspaces.len();
        self.0.workspaces.retain(|_, state| {
            // The map's shard is locked here, so no new handle can appear meanwhile.
            state.overridden
                || state.slow != 1.0
                || Arc::strong_count(state) > 1
                || !state.is_idle(now)
        });
        self.0.recent.retain(|_, r| !r.is_stale(now.as_u64()));
        let dropped = before.saturating_sub(self.0.workspaces.len());
        if dropped > 0 {
            self.0.workspaces.shrink_to_fit();
            tracing::debug!(
                dropped,
                kept = before - dropped,
                "forgot idle workspace limiters"
            );
        }
    }

    /// How long callers have waited on `kind` so far in this process, the waits still in
    /// progress included: what a progress display shows while an execution is held back.
    pub fn throttled_so_far(&self, kind: LimitKind) -> Duration {
        let log = &self.0.log.kinds[kind.index()];
        let mut nanos = log.waited.load(Ordering::Acquire);
        if log.waiting.load(Ordering::Acquire) > 0 {
            let since = log.since.load(Ordering::Acquire);
            nanos = nanos.saturating_add(self.0.time.now().as_u64().saturating_sub(since));
        }
        Duration::from_nanos(nanos)
    }

    /// How many workspaces have limiter state.
    pub fn len(&self) -> usize {
        self.0.workspaces.len()
    }

    /// True when no workspace has limiter state.
    pub fn is_empty(&self) -> bool {
        self.0.workspaces.is_empty()
    }
}

impl Registry {
    /// A workspace's state with `quotas`, reusing the buckets of `previous` whose quota is
    /// unchanged so that their tokens carry over.
    fn state(
        &self,
        name: Arc<str>,
        base: [Option<Quota>; 4],
        overridden: bool,
        slow: f64,
        previous: Option<&WorkspaceState>,
    ) -> WorkspaceState {
        let quotas = base.map(|q| q.map(|q| scaled(q, slow)));
        let buckets = LimitKind::ALL.map(|kind| {
            let quota = quotas[kind.index()]?;
            let kept = previous
                .and_then(|p| p.buckets[kind.index()].as_ref())
                .filter(|b| b.quota() == quota);
            Some(match kept {
                Some(bucket) => Arc::clone(bucket),
                None => Arc::new(Bucket::new(quota, self.time.clone())),
            })
        });
        WorkspaceState {
            name,
            log: Arc::clone(&self.log),
            buckets,
            base,
            slow,
            overridden,
        }
    }

    /// The quotas of workspace `ws` under `overrides`, each override replacing one default.
    fn quotas(
        &self,
        ws: &str,
        overrides: &Overrides,
    ) -> Result<[Option<Quota>; 4], Vec<LimitError>> {
        if self.disabled || overrides.disabled {
            return Ok([None; 4]);
        }
        let mut quotas = self.default_quotas;
        let mut errors = Vec::new();
        for kind in LimitKind::ALL {
            let i = kind.index();
            if overrides.rate[i].is_none() && overrides.burst[i].is_none() {
                continue;
            }
            let default = self.defaults.get(kind);
            let rate = overrides.rate[i].unwrap_or(default.rate);
            let burst = overrides.burst[i].unwrap_or(default.burst);
            match values::quota(rate, burst) {
                Ok(quota) => quotas[i] = quota,
                // Each value passed on its own, so the pair fails on the burst (0 or too big).
                Err(problem) => errors.push(LimitError::BadValue {
                    workspace: ws.to_owned(),
                    key: secrets::burst_key(kind),
                    problem,
                }),
            }
        }
        if errors.is_empty() {
            Ok(quotas)
        } else {
            Err(errors)
        }
    }
}

/// `quota` with its rate multiplied by `slow` and the same burst.
fn scaled(quota: Quota, slow: f64) -> Quota {
    if slow == 1.0 {
        return quota;
    }
    Duration::try_from_secs_f64(quota.replenish_interval().as_secs_f64() / slow)
        .ok()
        .and_then(Quota::with_period)
        .map_or(quota, |q| q.allow_burst(quota.burst_size()))
}

impl WorkspaceState {
    fn is_idle(&self, now: governor::nanos::Nanos) -> bool {
        self.buckets.iter().flatten().all(|b| b.is_idle(now))
    }
}

/// Logs each limit of `ws` that changes, so operators see their secrets take effect.
fn log_changes(ws: &str, old: [Option<Quota>; 4], new: [Option<Quota>; 4]) {
    for kind in LimitKind::ALL {
        let (old, new) = (old[kind.index()], new[kind.index()]);
        if old != new {
            tracing::info!(
                workspace = ws,
                limit = kind.as_str(),
                from = %QuotaText(old),
                to = %QuotaText(new),
                "rate limit changed"
            );
        }
    }
}

/// A quota as "100/s burst 400", or "off".
struct QuotaText(Option<Quota>);

impl fmt::Display for QuotaText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("off"),
            Some(q) => write!(
                f,
                "{}/s burst {}",
                1.0 / q.replenish_interval().as_secs_f64(),
                q.burst_size()
            ),
        }
    }
}

/// The limits of one workspace; a cheap clone.
#[derive(Clone)]
pub struct WorkspaceLimits(Arc<WorkspaceState>);

impl WorkspaceLimits {
    /// Waits until `n` tokens of `kind` are granted and returns how long it waited
    /// (`Duration::ZERO` when uncontended or not limited). Callers are served in arrival
    /// order per workspace and kind; more than a burst is taken one burst at a time.
    pub async fn acquire(&self, kind: LimitKind, n: u32) -> Duration {
        let (Some(bucket), Some(n)) = (self.0.buckets[kind.index()].as_deref(), NonZeroU32::new(n))
        else {
            return Duration::ZERO;
        };
        if bucket.try_take(n) {
            return Duration::ZERO;
        }
        let record = WaitRecord::begin(&self.0.log.kinds[kind.index()], bucket.clock());
        // Boxed so that the future of the common, uncontended call stays small.
        let waited = Box::pin(bucket.wait(n)).await;
        drop(record);
        let wait_ms = waited.as_secs_f64() * 1000.0;
        let workspace = &*self.0.name;
        let limit = kind.as_str();
        if waited > NOTICEABLE_WAIT {
            tracing::info!(workspace, limit, wait_ms, "throttled");
        } else {
            tracing::debug!(workspace, limit, wait_ms, "throttled");
        }
        waited
    }

    /// The workspace's name.
    pub fn workspace(&self) -> &str {
        &self.0.name
    }

    /// The factor a credit-quota band puts on this workspace's rates (1 is full speed).
    pub fn slow(&self) -> f64 {
        self.0.slow
    }

    /// The quota enforced for `kind`, or `None` when it is not limited.
    pub fn quota(&self, kind: LimitKind) -> Option<Quota> {
        self.0.buckets[kind.index()].as_ref().map(|b| b.quota())
    }
}

impl fmt::Debug for Limiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiters")
            .field("workspaces", &self.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for WorkspaceLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("WorkspaceLimits");
        s.field("workspace", &self.workspace());
        for kind in LimitKind::ALL {
            s.field(
                kind.as_str(),
                &format_args!("{}", QuotaText(self.quota(kind))),
            );
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests;
