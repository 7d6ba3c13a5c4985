//! Credit quotas per workspace (SPEC section 8): plans of monthly credits, charges, bands
//! of restriction, billing cycles in the workspace's time zone, durable usage.
//!
//! The hot path ([`Quotas::charge`], [`Quotas::decision`]) touches only memory: one map
//! look-up and one short per-workspace lock. Charges pile up as a pending delta that
//! [`Quotas::flush`] hands to the [`Store`] in one batch, at least every second
//! ([`Quotas::run_flusher`]) and on shutdown, so a crash loses at most the last second of
//! charges. With a shared store (NATS) the flush also reads the cluster's totals back, so
//! every instance sees a workspace go over its credits within a second, and the store
//! decides which instance announces a band.
//!
//! - [`settings`]: the `quotas:` settings and the per-workspace secrets.
//! - [`cycle`]: calendar cycles in a time zone.
//! - [`bands`]: which band a usage is in and what it restricts.
//! - [`ledger`]: credit amounts, the per-cycle ledger and its view.
//! - [`store`]: the embedded (redb) and cluster (NATS key-value) stores.

pub mod bands;
pub mod cycle;
pub mod ledger;
pub mod settings;
pub mod store;
mod workspace;

pub use bands::Bands;
pub use cycle::{Cycle, CycleRule};
pub use ledger::{Ledger, Totals, UsageView};
pub use settings::{QuotaClass, QuotaPolicy, QuotaSecretError, QuotaSettings, QuotaSettingsError};
pub use store::{LedgerKey, NatsKvStore, RedbStore, Store, StoreError};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ledger::{credits, rfc3339, MAX_CREDITS};
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use workspace::{lock, WsState, LIST_REFRESH};

/// How many band events a slow subscriber may fall behind before missing some.
const EVENTS_CAPACITY: usize = 1024;

/// The credit quotas of every workspace of this process; clones share them.
#[derive(Clone)]
pub struct Quotas(Arc<Inner>);

struct Inner {
    settings: QuotaSettings,
    bands: Bands,
    store: Arc<dyn Store>,
    workspaces: DashMap<Arc<str>, Arc<Mutex<WsState>>>,
    /// Deltas of cycles that ended, or of workspaces removed, still to be written.
    orphans: Mutex<Vec<(LedgerKey, Ledger)>>,
    /// One flush at a time, so a delta is never in flight twice.
    flushing: tokio::sync::Mutex<()>,
    events: broadcast::Sender<BandEvent>,
}

/// Refused input: the message names the value and what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// A charge or top-up that is not a usable amount of credits.
    #[error("{what}: {value} is not valid, expected a number of credits from 0 to {MAX_CREDITS}")]
    BadAmount {
        /// What the amount was for.
        what: &'static str,
        /// The amount, as given.
        value: String,
    },
    /// Credits added to a workspace that has no quota.
    #[error("workspace {0} has no quota: give it a plan (sluice_quota_plan or quotas.default_plan) or sluice_quota_credits before adding credits")]
    NoQuota(String),
    /// A `?cycle=` that names no cycle of the workspace.
    #[error("cycle {given}: not a cycle of workspace {workspace}, expected the date a cycle starts on (YYYY-MM-DD), such as {example}")]
    BadCycle {
        /// The workspace.
        workspace: String,
        /// The cycle as given.
        given: String,
        /// The current cycle's id.
        example: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the quota says about starting work of a class now.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The workspace's band number (1 is the lowest), if in one.
    pub band: Option<usize>,
    /// Set when the class is restricted.
    pub restricted: Option<Restriction>,
    /// The factor for the workspace's four built-in rates (1 is full speed).
    pub slow: f64,
}

/// Why work is refused, and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Restriction {
    /// The band's number.
    pub band: usize,
    /// The band's `at`.
    pub at: f64,
    /// When the cycle resets.
    pub resets_at: DateTime<Utc>,
    /// Whole seconds until then (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

/// The payload of `runtime.quota.band`: a workspace entered a band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandEvent {
    /// The workspace (not part of the payload: the event is emitted into it).
    #[serde(skip)]
    pub workspace: String,
    /// The band's number (1 is the lowest).
    pub band: usize,
    /// The band's `at`, in percent.
    pub at: f64,
    /// Usage in percent when the band was entered.
    pub percent: f64,
    /// Credits used.
    pub used: f64,
    /// The cycle's credits (plan plus added).
    pub credits: f64,
    /// The classes the band restricts.
    pub restrict: Vec<QuotaClass>,
    /// The band's factor on the built-in rates.
    pub slow: f64,
    /// When the cycle resets (RFC 3339).
    #[serde(rename = "resetsAt")]
    pub resets_at: String,
}

impl Quotas {
    /// The quotas of validated `settings`, kept in `store`.
    pub fn new(settings: QuotaSettings, store: Arc<dyn Store>) -> Quotas {
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        Quotas(Arc::new(Inner {
            bands: Bands::new(settings.bands.clone()),
            settings,
            store,
            workspaces: DashMap::new(),
            orphans: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
            events,
        }))
    }

    /// The settings these quotas run with.
    pub fn settings(&self) -> &QuotaSettings {
        &self.0.settings
    }

    /// Band events from now on, to publish as `runtime.quota.band` into their workspace.
    pub fn subscribe(&self) -> broadcast::Receiver<BandEvent> {
        self.0.events.subscribe()
    }

    fn state(&self, ws: &str, now: DateTime<Utc>) -> Arc<Mutex<WsState>> {
        if let Some(s) = self.0.workspaces.get(ws) {
            return Arc::clone(s.value());
        }
        let policy = self.0.settings.default_policy();
        let name: Arc<str> = Arc::from(ws);
        Arc::clone(
            self.0
                .workspaces
                .entry(Arc::clone(&name))
                .or_insert_with(|| Arc::new(Mutex::new(WsState::new(name, policy, now))))
                .value(),
        )
    }

    /// Sets the policy of `ws`; a workspace never given one has the settings' default.
    pub fn set_policy(&self, ws: &str, policy: QuotaPolicy, now: DateTime<Utc>) {
        let state = self.state(ws, now);
        let mut s = lock(&state);
        if s.policy == policy {
            return;
        }
        tracing::info!(workspace = ws, plan = ?policy.plan, credits = ?policy.credits.map(credits), "quota policy set");
        s.policy = policy;
        // A new day or zone may put `now` in another cycle: ending the current one at
        // `now` makes `roll` move to the cycle of `now` (the same cycle, bounds in another
        // zone, carries its usage over).
        s.cycle.end = now;
        s.roll(now, &self.0.orphans);
    }

    /// Reads the `sluice_quota_*` secrets of `ws` into its policy; on an error nothing
    /// changes and the error names the secret.
    pub fn apply_secrets(
        &self,
        ws: &str,
        secrets: &crate::value::Map,
        now: DateTime<Utc>,
    ) -> Result<(), QuotaSecretError> {
        let policy = self.0.settings.policy(ws, secrets)?;
        self.set_policy(ws, policy, now);
        Ok(())
    }

    /// Forgets `ws` (its workspace was removed); what it had pending is still written.
    pub fn remove(&self, ws: &str) {
        if let Some((_, state)) = self.0.workspaces.remove(ws) {
            lock(&state).orphan_pending(&self.0.orphans);
        }
    }

    /// Charges `amount` credits to `ws` for automation `slug`. Memory only: the store sees
    /// it at the next flush.
    pub fn charge(
        &self,
        ws: &str,
        slug: &str,
        amount: f64,
        now: DateTime<Utc>,
    ) -> Result<(), QuotaError> {
        let n = settings::credits_amount(amount).map_err(|_| QuotaError::BadAmount {
            what: "charge",
            value: amount.to_string(),
        })?;
        if n == 0 {
            return Ok(());
        }
        let state = self.state(ws, now);
        let mut s = lock(&state);
        s.roll(now, &self.0.orphans);
        s.seen = now;
        s.pending.charge(slug, n);
        Ok(())
    }

    /// The factor `ws`'s band scales the built-in rates by (1 outside every band). Unlike
    /// [`Quotas::decision`] it is not a use of the workspace, so the periodic sync and the
    /// pages that call it for every workspace do not keep them all read back.
    pub fn slow(&self, ws: &str, now: DateTime<Utc>) -> f64 {
        let state = self.state(ws, now);
        let mut s = lock(&state);
        s.roll(now, &self.0.orphans);
        self.0
            .bands
            .current(s.percent())
            .map_or(1.0, |(_, settings)| settings.slow_factor())
    }

    /// Whether work of `class` may start in `ws` now, and how fast the workspace runs.
    pub fn decision(&self, ws: &str, class: QuotaClass, now: DateTime<Utc>) -> Decision {
        let state = self.state(ws, now);
        let mut s = lock(&state);
        s.roll(now, &self.0.orphans);
        s.seen = now;
        let Some((band, settings)) = self.0.bands.current(s.percent()) else {
            return Decision {
                band: None,
                restricted: None,
                slow: 1.0,
            };
        };
        let restricted = settings.restricts(class).then(|| {
            let millis = (s.cycle.end - now).num_milliseconds().max(0);
            Restriction {
                band,
                at: settings.at,
                resets_at: s.cycle.end,
                retry_after: u64::try_from((millis + 999) / 1000).unwrap_or(1).max(1),
            }
        });
        Decision {
            band: Some(band),
            restricted,
            slow: settings.slow_factor(),
        }
    }

    /// Adds `amount` credits to the current cycle of `ws`, lifting restrictions at once,
    /// and writes them to the store before answering with the new usage. When the store
    /// fails they stay added and pending like any charge, so the answer is still the new
    /// usage: an error would invite the caller to add them twice.
    pub async fn add_credits(
        &self,
        ws: &str,
        amount: f64,
        now: DateTime<Utc>,
    ) -> Result<UsageView, QuotaError> {
        let bad = || QuotaError::BadAmount {
            what: "credits",
            value: amount.to_string(),
        };
        let n = settings::credits_amount(amount).map_err(|_| bad())?;
        // Announces the bands the charges so far entered, before the credits take the
        // workspace out of them: they were entered (and restricted work) all the same.
        let _ = self.flush(now).await;
        let state = self.state(ws, now);
        {
            let mut s = lock(&state);
            s.roll(now, &self.0.orphans);
            if s.policy.credits.is_none() {
                return Err(QuotaError::NoQuota(ws.to_owned()));
            }
            s.pending.added = s.pending.added.saturating_add(n);
        }
        // `flush` logs a failure and keeps the credits pending for the next flush.
        let _ = self.flush(now).await;
        let ledger = lock(&state).ledger();
        Ok(UsageView::new(&ledger, &self.0.bands))
    }

    /// The usage of `ws` in the current cycle, or in cycle `cycle` (`YYYY-MM-DD`).
    pub async fn usage(
        &self,
        ws: &str,
        cycle: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UsageView, QuotaError> {
        let state = self.state(ws, now);
        let (current, rule) = {
            let mut s = lock(&state);
            s.roll(now, &self.0.orphans);
            (s.cycle.clone(), s.policy.cycle)
        };
        let past = cycle.filter(|c| *c != current.id);
        let Some(id) = past else {
            if self.refresh(&mut lock(&state), now, chrono::TimeDelta::zero()) {
                self.flush(now).await?;
            }
            let ledger = lock(&state).ledger();
            return Ok(UsageView::new(&ledger, &self.0.bands));
        };
        let key = LedgerKey {
            workspace: ws.to_owned(),
            cycle: id.to_owned(),
        };
        if let Some(ledger) = self.0.store.read(&key).await? {
            return Ok(UsageView::new(&ledger, &self.0.bands));
        }
        let bad = || QuotaError::BadCycle {
            workspace: ws.to_owned(),
            given: id.to_owned(),
            example: current.id.clone(),
        };
        let cycle = rule.by_id(id).ok_or_else(bad)?;
        // A cycle of the workspace with nothing recorded: zero usage.
        let s = lock(&state);
        let empty = Ledger {
            start: cycle.start.timestamp_millis(),
            end: cycle.end.timestamp_millis(),
            plan: s.policy.plan.clone(),
            credits: s.policy.credits,
            totals: Totals::default(),
        };
        Ok(UsageView::new(&empty, &self.0.bands))
    }

    /// Whether a view of `s` must read the store first: never read, or not in use here
    /// lately with a shared store (whose other instances may have charged it since) and last
    /// read at least `every` ago. Marks it unsynced, so that the next flush reads it once; a
    /// view does not put it in use.
    fn refresh(&self, s: &mut WsState, now: DateTime<Utc>, every: chrono::TimeDelta) -> bool {
        let due = s.read_at.is_none_or(|at| now - at >= every);
        if self.0.store.shared() && !s.in_use(now) && due {
            s.synced = false;
        }
        !s.synced
    }

    /// The current usage of every workspace known here, by name.
    /// Workspaces not in use here are read again at most every 15 s (`LIST_REFRESH`), so that a
    /// page or the metrics sync polling every workspace reads each idle one that often, not
    /// at every poll; one workspace's view is always read.
    pub async fn list(&self, now: DateTime<Utc>) -> Result<Vec<(String, UsageView)>, QuotaError> {
        let mut stale = false;
        for e in self.0.workspaces.iter() {
            let mut s = lock(e.value());
            s.roll(now, &self.0.orphans);
            stale |= self.refresh(&mut s, now, LIST_REFRESH);
        }
        if stale {
            self.flush(now).await?;
        }
        let mut all: Vec<(String, UsageView)> = self
            .0
            .workspaces
            .iter()
            .map(|e| {
                let view = UsageView::new(&lock(e.value()).ledger(), &self.0.bands);
                (e.key().to_string(), view)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Writes what is pending to the store (reading other instances' totals back with a
    /// shared store), then announces the bands newly entered. On a store error the
    /// deltas stay pending for the next flush.
    pub async fn flush(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let _one = self.0.flushing.lock().await;
        let shared = self.0.store.shared();
        let mut batch = Vec::new();
        let mut targets = Vec::new();
        for entry in self.0.workspaces.iter() {
            let mut s = lock(entry.value());
            s.roll(now, &self.0.orphans);
            // Reading back what other instances charged matters only for workspaces in
            // use here; the others are read again when next used or shown.
            let read_back = shared && s.in_use(now);
            if s.pending.is_empty() && s.synced && !read_back {
                continue;
            }
            s.in_flight = std::mem::take(&mut s.pending);
            let delta = s.delta(s.in_flight.clone());
            batch.push((s.key(), delta));
            targets.push((Arc::clone(entry.key()), Arc::clone(entry.value())));
        }
        // Taken last, so the deltas of cycles that `roll` just ended go in this batch.
        batch.append(&mut lock(&self.0.orphans));
        if batch.is_empty() {
            return Ok(());
        }
        let results = self.0.store.apply(&batch).await;
        let mut failure = None;
        for (i, result) in results.into_iter().enumerate() {
            let (key, delta) = &batch[i];
            let Some(target) = targets.get(i) else {
                if let Err(e) = result {
                    lock(&self.0.orphans).push((key.clone(), delta.clone()));
                    failure = Some(e);
                }
                continue;
            };
            let mut s = lock(&target.1);
            let same_cycle = s.cycle.id == key.cycle;
            match result {
                Ok(ledger) if same_cycle => {
                    s.base = ledger.totals;
                    s.in_flight = Totals::default();
                    s.synced = true;
                    s.read_at = Some(now);
                }
                Ok(_) => {}
                Err(e) => {
                    let in_flight = std::mem::take(&mut s.in_flight);
                    if same_cycle {
                        s.pending.absorb(&in_flight);
                    } else if !delta.totals.is_empty() {
                        lock(&self.0.orphans).push((key.clone(), delta.clone()));
                    }
                    failure = Some(e);
                }
            }
        }
        for (name, state) in &targets {
            self.announce(name, state).await;
        }
        match failure {
            Some(e) => {
                tracing::warn!(error = %e, "quota usage not written; retrying at the next flush");
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Emits an event for each band `state` entered that no instance announced yet.
    async fn announce(&self, name: &str, state: &Mutex<WsState>) {
        let (entered, key) = {
            let s = lock(state);
            let pct = s.percent();
            let entered: Vec<(usize, f64)> = self
                .0
                .bands
                .entered(pct, &s.announced)
                .map(|(n, b)| (n, b.at))
                .collect();
            (entered, s.key())
        };
        for (number, at) in entered {
            let won = match self.0.store.claim_band(&key, at).await {
                Ok(won) => won,
                Err(e) => {
                    tracing::warn!(workspace = name, at, error = %e, "cannot claim a quota band; retrying at the next flush");
                    return;
                }
            };
            let event = {
                let mut s = lock(state);
                if s.cycle.id != key.cycle {
                    return;
                }
                s.announced.push(at);
                let (used, total) = s.used_and_total();
                let band = &self.0.settings.bands[number - 1];
                BandEvent {
                    workspace: name.to_owned(),
                    band: number,
                    at,
                    percent: s.percent().unwrap_or_default(),
                    used: credits(used),
                    credits: credits(total.unwrap_or_default()),
                    restrict: band.restrict.clone(),
                    slow: band.slow_factor(),
                    resets_at: rfc3339(s.cycle.end.timestamp_millis()),
                }
            };
            if won {
                tracing::info!(
                    workspace = name,
                    band = number,
                    at,
                    "workspace entered a quota band"
                );
                // Nobody listening is fine: the band is still counted as announced.
                let _ = self.0.events.send(event);
            }
        }
    }

    /// Flushes every `every` until `stop` completes, then flushes once more.
    pub async fn run_flusher(&self, every: Duration, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // A failure is logged by `flush` and retried at the next tick.
                    let _ = self.flush(Utc::now()).await;
                }
                () = &mut stop => break,
            }
        }
        if let Err(e) = self.flush(Utc::now()).await {
            tracing::error!(error = %e, "quota usage of the last second not written at shutdown");
        }
    }
}

#[cfg(test)]
mod tests;
