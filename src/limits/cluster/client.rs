//! One instance's side of cluster limits: asking owners for grants, holding slots, and
//! contending for ownership of the limits it uses.
//!
//! Each limit this instance has used gets an agent task that, every third of the lease,
//! renews (or tries to take) the limit's lease, and heartbeats this instance's held slots
//! and waiting requests to the owner. When the owner stops answering the agent retries every
//! [`RETRY`], so a new owner gets the lease and the survivors' slots without delay, and
//! requests the new owner does not know are sent again (keeping their priority and lane;
//! their wait keeps running). An agent whose limit nobody used for [`IDLE_LEASES`] leases
//! (here, nor through this instance as its owner), with no slot held or request waiting
//! anywhere, retires and hands its lease over; the next use starts a new one.

use super::lease::{Holder, Leases};
use super::owner::Owner;
use super::wire::{self, Late, Reply, ToOwner};
use super::{lock, LocalGrantor};
use super::{ClusterError, ClusterRequest, ClusterSettings, Denied, HolderId, LimitRef};
use async_nats::client::{Request, RequestErrorKind};
use dashmap::DashMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Pause between attempts while a limit has no owner answering.
pub(super) const RETRY: Duration = Duration::from_millis(100);
/// How long one message to an owner waits for its answer before it is sent again.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// How long after its wait a queued request still accepts the owner's answer, which the
/// owner sends at the end of the same wait.
const GRACE: Duration = Duration::from_millis(500);
/// How long a shutdown waits for the leases to be given back.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts to deliver a release before leaving it to the next heartbeat.
const RELEASE_ATTEMPTS: usize = 3;
/// Leases after which a limit nobody used retires its agent (and hands its lease over):
/// a minute at the default lease, so a workspace that used many limits once, or renamed
/// them, leaves no task, timer or lease behind.
const IDLE_LEASES: u32 = 12;

/// Cluster limits as seen by one instance; dropping it stops its tasks (as a dead instance
/// would), [`ClusterLimits::shutdown`] first hands its limits over.
pub struct ClusterLimits {
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<()>>,
}

/// What the tasks, permits and callers of one instance share.
struct Shared {
    client: async_nats::Client,
    settings: ClusterSettings,
    instance: String,
    grantor: Arc<dyn LocalGrantor>,
    leases: Leases,
    limits: DashMap<LimitRef, Arc<Limit>>,
    next: AtomicU64,
    /// Cancelled by [`ClusterLimits::shutdown`]: agents give their leases back.
    closing: CancellationToken,
}

/// This instance's state for one cluster limit.
#[derive(Default)]
struct Limit {
    /// When an acquisition last asked for the limit here, or (when this instance owns it)
    /// last reached its owner task: the agent retires once it is old and nothing is held.
    used: Used,
    /// Held slots: request number → key.
    held: Mutex<HashMap<u64, String>>,
    /// Requests waiting for an answer: number → where the answer goes.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Reply>>>,
    /// The owner's view, as its last heartbeat answer gave it.
    status: Mutex<Option<ClusterStatus>>,
    /// Wakes the agent early: a request found no owner.
    poke: Notify,
}

impl Limit {
    /// Nothing used it for `idle`, this instance holds and awaits nothing of it, and the
    /// owner's last answer showed no holder or waiter anywhere.
    fn is_idle(&self, idle: Duration) -> bool {
        self.used.since() >= idle
            && lock(&self.held).is_empty()
            && lock(&self.waiting).is_empty()
            && lock(&self.status)
                .as_ref()
                .is_some_and(|s| s.holders == 0 && s.waiters == 0)
    }
}

/// The last use of a limit on this instance.
#[derive(Clone)]
pub(super) struct Used(Arc<Mutex<Instant>>);

impl Default for Used {
    fn default() -> Used {
        Used(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Used {
    /// Records a use now.
    pub(super) fn touch(&self) {
        *lock(&self.0) = Instant::now();
    }

    fn since(&self) -> Duration {
        lock(&self.0).elapsed()
    }
}

impl ClusterLimits {
    /// Cluster limits over `client`, with `grantor` as the limiter run for limits this
    /// instance comes to own. Fails if the settings are invalid or the ownership bucket cannot
    /// be created (JetStream off, or nats-server older than 2.11).
    pub async fn connect(
        client: async_nats::Client,
        settings: &ClusterSettings,
        grantor: Arc<dyn LocalGrantor>,
    ) -> Result<ClusterLimits, ClusterError> {
        settings.validate()?;
        // Random, and a valid subject token: it names this instance's inbox.
        let instance = format!("{:016x}", rand::random::<u64>());
        let leases = Leases::open(client.clone(), settings, &instance).await?;
        let inbox = client
            .subscribe(wire::inbox(&instance))
            .await
            .map_err(|e| ClusterError::Nats(format!("subscribing to the limits inbox: {e}")))?;
        let shared = Arc::new(Shared {
            client,
            settings: settings.clone(),
            instance,
            grantor,
            leases,
            limits: DashMap::new(),
            next: AtomicU64::new(1),
            closing: CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(dispatch(shared.clone(), inbox));
        Ok(ClusterLimits {
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// Gives the limits this instance owns back at once, so that another instance takes
    /// them over without waiting for the lease to expire; then stops this instance's tasks.
    /// The other instances' waiters are sent on to the new owners.
    pub async fn shutdown(&self) {
        self.shared.closing.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let handed_over = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        });
        if handed_over.await.is_err() {
            tasks.abort_all();
        }
    }

    /// This instance's id in the cluster (as owners and the operator view name it).
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The owner of `limit` and its cluster-wide holders and waiters, as last heard by this
    /// instance (at most a third of the lease old; `None` before any answer).
    pub fn status(&self, limit: &LimitRef) -> Option<ClusterStatus> {
        let limit = self.shared.limits.get(limit)?;
        let status = lock(&limit.status).clone();
        status
    }

    /// Acquires `ask` from the limit's owner, waiting at most `ask.wait`. The permit holds
    /// the slot (if the limit has concurrency) until dropped.
    pub async fn acquire(&self, ask: ClusterRequest) -> Result<ClusterPermit, Denied> {
        let limit = self.limit(&ask.limit);
        let request = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut answers) = mpsc::unbounded_channel();
        lock(&limit.waiting).insert(request, tx);
        let _waiting = Waiting(limit.clone(), request);
        let started = Instant::now();
        let deadline = ask.wait.map(|w| started + w);
        // With no owner yet, electing one is part of the answer's round trip: even `wait: 0`
        // gives it as long as an owner's answer may take, rather than refusing an idle limit.
        let elected_by = started + ANSWER_TIMEOUT;
        let subject = wire::subject(&ask.limit);
        // Whether the owner made it wait in line: only then is the time reported as waited.
        let mut queued = false;
        loop {
            let wait_ms = deadline.map(|d| {
                u64::try_from(d.saturating_duration_since(Instant::now()).as_millis())
                    .unwrap_or(u64::MAX)
            });
            let message = ToOwner::Acquire {
                instance: self.shared.instance.clone(),
                request,
                ask: ask.clone(),
                wait_ms,
            };
            let sent = self
                .shared
                .client
                .send_request(
                    subject.clone(),
                    Request::new()
                        .payload(wire::encode(&message).into())
                        .timeout(Some(ANSWER_TIMEOUT)),
                )
                .await;
            let no_owner = matches!(&sent, Err(e) if e.kind() == RequestErrorKind::NoResponders);
            let mut reply = match sent {
                Ok(m) => wire::decode::<Reply>(&m.payload, "cluster limit answer").ok(),
                Err(e) => {
                    if no_owner {
                        // No owner: have the agent try to take the lease now.
                        limit.poke.notify_one();
                    }
                    if e.kind() != RequestErrorKind::TimedOut {
                        pause(answer_by(deadline, no_owner, elected_by)).await;
                    }
                    None
                }
            };
            if reply == Some(Reply::Queued) {
                queued = true;
                let until = deadline.map(|d| d + GRACE);
                reply = tokio::select! {
                    answer = answers.recv() => answer,
                    () = sleep_until(until) => None,
                };
            }
            match reply {
                Some(Reply::Granted { slot }) => {
                    let waited = if queued {
                        started.elapsed()
                    } else {
                        Duration::ZERO
                    };
                    return Ok(self.permit(&limit, &ask, request, slot, waited));
                }
                Some(Reply::Refused { retry_after_ms }) => {
                    return Err(Denied::Busy {
                        retry_after: retry_after_ms.map(Duration::from_millis),
                    });
                }
                // The owner is handing the limit over: give the next one a moment.
                Some(Reply::Moved) => pause(deadline).await,
                _ => {}
            }
            if answer_by(deadline, no_owner, elected_by).is_some_and(|d| Instant::now() >= d) {
                return Err(Denied::Busy {
                    retry_after: Some(RETRY),
                });
            }
        }
    }

    fn permit(
        &self,
        limit: &Arc<Limit>,
        ask: &ClusterRequest,
        request: u64,
        slot: bool,
        waited: Duration,
    ) -> ClusterPermit {
        let holder = slot.then(|| {
            lock(&limit.held).insert(request, ask.key.clone());
            HolderId {
                instance: self.shared.instance.clone(),
                request,
            }
        });
        ClusterPermit {
            shared: self.shared.clone(),
            limit: ask.limit.clone(),
            key: ask.key.clone(),
            holder,
            waited,
        }
    }

    /// This instance's state for `limit`, starting its agent on first use.
    fn limit(&self, limit: &LimitRef) -> Arc<Limit> {
        // Touched under the map's guard: an agent retires only by removing its entry under
        // the same shard's lock, after seeing it unused, so a use is never lost to it.
        if let Some(state) = self.shared.limits.get(limit) {
            state.used.touch();
            return state.clone();
        }
        let mut created = false;
        let state = self
            .shared
            .limits
            .entry(limit.clone())
            .or_insert_with(|| {
                created = true;
                Arc::new(Limit::default())
            })
            .clone();
        state.used.touch();
        if created {
            let shared = self.shared.clone();
            let limit = limit.clone();
            let agent_state = state.clone();
            lock(&self.tasks).spawn(agent(shared, limit, agent_state));
        }
        state
    }
}

impl Drop for ClusterLimits {
    fn drop(&mut self) {
        lock(&self.tasks).abort_all();
    }
}

/// Removes a finished acquisition from the waiting list, however it ends.
struct Waiting(Arc<Limit>, u64);

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.0.waiting).remove(&self.1);
    }
}

/// A cluster limit as its owner sees it, for metrics and the operator view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The owner's instance id.
    pub owner: String,
    /// Slots held across the cluster.
    pub holders: usize,
    /// Acquisitions waiting across the cluster.
    pub waiters: usize,
}

/// A granted cluster acquisition; dropping it releases its slot at once.
pub struct ClusterPermit {
    shared: Arc<Shared>,
    limit: LimitRef,
    key: String,
    holder: Option<HolderId>,
    waited: Duration,
}

impl ClusterPermit {
    /// Whether this permit holds a concurrency slot.
    pub fn holds_slot(&self) -> bool {
        self.holder.is_some()
    }

    /// How long the acquisition waited in the owner's line (zero if granted at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl std::fmt::Debug for ClusterPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPermit")
            .field("limit", &self.limit)
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Drop for ClusterPermit {
    fn drop(&mut self) {
        let Some(holder) = self.holder.take() else {
            return;
        };
        if let Some(limit) = self.shared.limits.get(&self.limit) {
            lock(&limit.held).remove(&holder.request);
        }
        // Without a runtime (process exit) the owner frees the slot on the next heartbeat.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release(
                self.shared.clone(),
                self.limit.clone(),
                self.key.clone(),
                holder,
            ));
        }
    }
}

/// Tells the owner a slot is free, retrying a few times; if all fail the next heartbeat,
/// which no longer lists the slot, frees it.
async fn release(shared: Arc<Shared>, limit: LimitRef, key: String, holder: HolderId) {
    let message = wire::encode(&ToOwner::Release { holder, key });
    for _ in 0..RELEASE_ATTEMPTS {
        let sent = shared
            .client
            .send_request(
                wire::subject(&limit),
                Request::new()
                    .payload(message.clone().into())
                    .timeout(Some(ANSWER_TIMEOUT)),
            )
            .await;
        if sent.is_ok() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Hands late answers to their waiting requests; a slot granted to a request that gave up
/// is released at once.
async fn dispatch(shared: Arc<Shared>, mut inbox: async_nats::Subscriber) {
    loop {
        let message = tokio::select! {
            message = inbox.next() => message,
            () = shared.closing.cancelled() => None,
        };
        let Some(message) = message else { break };
        let Ok(late) = wire::decode::<Late>(&message.payload, "late cluster limit answer") else {
            continue;
        };
        let waiter = shared
            .limits
            .get(&late.limit)
            .and_then(|l| lock(&l.waiting).get(&late.request).cloned());
        let delivered = waiter.is_some_and(|w| w.send(late.reply.clone()).is_ok());
        if !delivered && late.reply == (Reply::Granted { slot: true }) {
            let holder = HolderId {
                instance: shared.instance.clone(),
                request: late.request,
            };
            tokio::spawn(release(shared.clone(), late.limit, late.key, holder));
        }
    }
}

/// Keeps one limit's lease and heartbeats for this instance.
async fn agent(shared: Arc<Shared>, limit: LimitRef, state: Arc<Limit>) {
    let mut serving: Option<Serving> = None;
    loop {
        if let Some(s) = serving.as_mut() {
            renew(&shared, &limit, s).await;
            // A serving task that ended (its subscription closed) is restarted by the next
            // take, which finds the lease still this instance's.
            if s.valid_until <= Instant::now() || s.task.is_finished() {
                tracing::warn!(%limit, "lost the lease of a cluster limit");
                serving = None;
            }
        } else {
            take(&shared, &limit, &state.used, &mut serving).await;
        }
        let pause = if heartbeat(&shared, &limit, &state).await {
            shared.settings.renew_every()
        } else {
            RETRY
        };
        let idle = shared.settings.lease() * IDLE_LEASES;
        if state.is_idle(idle)
            && shared
                .limits
                .remove_if(&limit, |_, s| Arc::ptr_eq(s, &state) && s.is_idle(idle))
                .is_some()
        {
            tracing::debug!(%limit, "retiring an unused cluster limit");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = state.poke.notified() => {}
            () = shared.closing.cancelled() => break,
        }
    }
    if let Some(Serving {
        revision,
        _stop,
        task,
        ..
    }) = serving.take()
    {
        // The owner task ends first, so the next owner never overlaps it.
        drop(_stop);
        let _ = task.await;
        shared.leases.resign(&limit, revision).await;
        tracing::info!(%limit, "handed a cluster limit over");
    }
}

/// The owner task of a limit this instance owns, and its lease.
struct Serving {
    revision: u64,
    /// When this instance must stop serving if it could not renew: before the TTL can
    /// expire at NATS, so two owners never serve at once.
    valid_until: Instant,
    /// Dropping it stops the owner task.
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Tries to take the lease; starts serving if it did.
async fn take(shared: &Arc<Shared>, limit: &LimitRef, used: &Used, serving: &mut Option<Serving>) {
    let sent_at = Instant::now();
    match shared.leases.take(limit).await {
        Ok(Holder::Me { revision, fresh }) => {
            let (stop, stopped) = oneshot::channel();
            let owner = Owner {
                client: shared.client.clone(),
                grantor: shared.grantor.clone(),
                settings: shared.settings.clone(),
                instance: shared.instance.clone(),
                limit: limit.clone(),
                fresh,
                used: used.clone(),
            };
            let name = limit.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = owner.serve(stopped).await {
                    tracing::warn!(limit = %name, error = %e, "stopped serving a cluster limit");
                }
            });
            *serving = Some(Serving {
                revision,
                valid_until: valid_until(shared, sent_at),
                _stop: stop,
                task,
            });
        }
        Ok(Holder::Other(_)) => {}
        Err(e) => {
            tracing::debug!(%limit, error = %e, "cannot read the owner of a cluster limit");
        }
    }
}

fn valid_until(shared: &Shared, sent_at: Instant) -> Instant {
    let lease = shared.settings.lease();
    sent_at + lease - lease / 6
}

async fn renew(shared: &Arc<Shared>, limit: &LimitRef, serving: &mut Serving) {
    let sent_at = Instant::now();
    match shared.leases.renew(limit, serving.revision).await {
        Ok(revision) => {
            serving.revision = revision;
            serving.valid_until = valid_until(shared, sent_at);
        }
        Err(e) => tracing::debug!(%limit, error = %e, "cannot renew the lease of a cluster limit"),
    }
}

/// Heartbeats this instance's slots and waiting requests of `limit` to its owner, and has
/// the requests it does not know sent again. Returns whether the owner answered.
async fn heartbeat(shared: &Arc<Shared>, limit: &LimitRef, state: &Arc<Limit>) -> bool {
    let holders = lock(&state.held)
        .iter()
        .map(|(request, key)| {
            (
                HolderId {
                    instance: shared.instance.clone(),
                    request: *request,
                },
                key.clone(),
            )
        })
        .collect();
    let waiting = lock(&state.waiting).keys().copied().collect();
    let message = ToOwner::Heartbeat {
        instance: shared.instance.clone(),
        holders,
        waiting,
    };
    let sent = shared
        .client
        .send_request(
            wire::subject(limit),
            Request::new()
                .payload(wire::encode(&message).into())
                .timeout(Some(ANSWER_TIMEOUT)),
        )
        .await;
    let Ok(answer) = sent else { return false };
    let Ok(Reply::Alive {
        owner,
        unknown,
        holders,
        waiters,
    }) = wire::decode(&answer.payload, "heartbeat answer")
    else {
        return false;
    };
    *lock(&state.status) = Some(ClusterStatus {
        owner,
        holders,
        waiters,
    });
    let waiting = lock(&state.waiting);
    for request in unknown {
        if let Some(tx) = waiting.get(&request) {
            let _ = tx.send(Reply::Moved);
        }
    }
    true
}

/// When a request must have its answer: its deadline, or while no owner answers, no sooner
/// than `elected_by`.
fn answer_by(deadline: Option<Instant>, no_owner: bool, elected_by: Instant) -> Option<Instant> {
    deadline.map(|d| if no_owner { d.max(elected_by) } else { d })
}

/// Sleeps [`RETRY`], or until `deadline` if sooner.
async fn pause(deadline: Option<Instant>) {
    let until = Instant::now() + RETRY;
    tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
}

/// Sleeps until `until`, or forever for `None`.
async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
