//! Serving a cluster limit while this instance owns it: every instance's acquisitions,
//! releases and heartbeats arrive on the limit's subject and go through the local limiter.
//!
//! - Acquisitions are numbered by their instance; a resend of a known number gets the same
//!   answer (queued, or the grant already made), never a second grant.
//! - An acquisition the limiter answers at once is answered in the reply; one that waits
//!   is answered "queued", and its result goes later to the instance's inbox.
//! - Right after a takeover the owner only listens for a short while: the instances that
//!   lost the old owner heartbeat every [`super::client::RETRY`], so their held slots are
//!   adopted before any new slot is granted. A first owner (no recent lease) serves at once.
//! - Held slots are swept every [`SWEEP`]: an instance silent for a lease loses them.
//! - A queued request its instance's heartbeat no longer lists (the caller gave up) leaves
//!   the line, so abandoned waits take neither units nor slots.

use super::client::Used;
use super::holders::Holders;
use super::wire::{self, Late, Reply, ToOwner};
use super::{lock, ClusterRequest, Refusal};
use super::{ClusterError, ClusterSettings, Grant, GrantRequest, HolderId, LimitRef, LocalGrantor};
use futures::{FutureExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How long a new owner listens to heartbeats before it serves acquisitions.
const LEARN: Duration = Duration::from_millis(300);
/// How often held slots are checked for silent instances: the slack on top of the lease.
const SWEEP: Duration = Duration::from_millis(100);
/// How long a request is in line before a heartbeat that does not list it can mean its
/// caller gave up: longer than a heartbeat takes to arrive.
const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// What the owner of one limit needs.
#[derive(Clone)]
pub(super) struct Owner {
    pub client: async_nats::Client,
    pub grantor: Arc<dyn LocalGrantor>,
    pub settings: ClusterSettings,
    pub instance: String,
    pub limit: LimitRef,
    /// Nobody owned the limit recently: no slot to learn, no grant to make up for.
    pub fresh: bool,
    /// Touched by every acquisition that reaches this owner, from any instance: an owner
    /// that other instances use is not idle.
    pub used: Used,
}

/// An acquisition the owner knows, by instance and number.
#[derive(Clone, Debug)]
enum Known {
    /// In the waiting line since `since`; `task` awaits its outcome (none while the owner
    /// is still learning).
    Queued {
        since: Instant,
        task: Option<AbortHandle>,
    },
    /// Answered at this time.
    Done(Reply, Instant),
}

/// State shared by the serving loop and its waiting acquisitions.
struct State {
    start: Instant,
    requests: HashMap<(String, u64), Known>,
    holders: Holders,
}

impl State {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Gives the limit back to the limiter however serving ends (stop, abort, error), so its
/// waiters are told to ask the new owner.
struct HandBack(Arc<dyn LocalGrantor>, LimitRef);

impl Drop for HandBack {
    fn drop(&mut self) {
        self.0.hand_back(&self.1);
    }
}

impl Owner {
    /// Serves the limit until `stop` fires or is dropped.
    pub(super) async fn serve(self, mut stop: oneshot::Receiver<()>) -> Result<(), ClusterError> {
        let mut messages = self
            .client
            .subscribe(wire::subject(&self.limit))
            .await
            .map_err(|e| ClusterError::Nats(format!("serving {}: {e}", self.limit)))?;
        self.grantor.take_over(&self.limit, self.fresh);
        let _hand_back = HandBack(self.grantor.clone(), self.limit.clone());
        tracing::info!(limit = %self.limit, instance = %self.instance, "owning cluster limit");
        let state = Arc::new(Mutex::new(State {
            start: Instant::now(),
            requests: HashMap::new(),
            holders: Holders::default(),
        }));
        let learning = tokio::time::sleep(LEARN);
        tokio::pin!(learning);
        let mut learnt = self.fresh;
        let mut buffered: Vec<(String, u64, ClusterRequest, Option<u64>, Instant)> = Vec::new();
        let mut sweep = tokio::time::interval(SWEEP);
        let mut forget = tokio::time::interval(self.settings.renew_every());
        loop {
            tokio::select! {
                _ = &mut stop => break,
                () = &mut learning, if !learnt => {
                    learnt = true;
                    for (instance, request, ask, wait_ms, at) in buffered.drain(..) {
                        // The caller's wait kept running while the owner listened.
                        let spent = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                        let wait_ms = wait_ms.map(|w| w.saturating_sub(spent));
                        let key = ask.key.clone();
                        if let Some(reply) = self.start(&state, instance.clone(), request, ask, wait_ms) {
                            self.send_late(&instance, request, key, reply).await;
                        }
                    }
                }
                _ = sweep.tick() => self.sweep(&state),
                _ = forget.tick() => forget_answers(&state, self.settings.lease()),
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let Some(reply_to) = message.reply.clone() else { continue };
                    let reply = match wire::decode::<ToOwner>(&message.payload, "cluster limit request") {
                        Ok(ToOwner::Acquire { instance, request, ask, wait_ms }) => {
                            self.used.touch();
                            let known = lock(&state).requests.get(&(instance.clone(), request)).cloned();
                            match known {
                                Some(Known::Queued { .. }) => Reply::Queued,
                                Some(Known::Done(reply, _)) => reply,
                                None if !learnt => {
                                    lock(&state).requests.insert((instance.clone(), request), queued());
                                    buffered.push((instance, request, ask, wait_ms, Instant::now()));
                                    Reply::Queued
                                }
                                None => self.start(&state, instance, request, ask, wait_ms).unwrap_or(Reply::Queued),
                            }
                        }
                        Ok(ToOwner::Release { holder, key }) => {
                            lock(&state).holders.released(&holder);
                            self.grantor.release(&self.limit, &key, &holder);
                            Reply::Released
                        }
                        Ok(ToOwner::Heartbeat { instance, holders, waiting }) => {
                            self.heartbeat(&state, &instance, &holders, &waiting)
                        }
                        Err(e) => {
                            tracing::warn!(limit = %self.limit, error = %e, "ignoring a cluster limit message");
                            continue;
                        }
                    };
                    let _ = self.client.publish(reply_to, wire::encode(&reply).into()).await;
                }
            }
        }
        Ok(())
    }

    /// Puts an acquisition in the limiter's line. Returns its answer if it came at once;
    /// otherwise a task sends it to the instance's inbox when it comes.
    fn start(
        &self,
        state: &Arc<Mutex<State>>,
        instance: String,
        request: u64,
        ask: ClusterRequest,
        wait_ms: Option<u64>,
    ) -> Option<Reply> {
        let holder = HolderId {
            instance: instance.clone(),
            request,
        };
        let key = ask.key.clone();
        let mut grant_request = GrantRequest {
            request: ask,
            holder: holder.clone(),
        };
        grant_request.request.wait = wait_ms.map(Duration::from_millis);
        let mut outcome = self.grantor.acquire(grant_request);
        if let Some(result) = (&mut outcome).now_or_never() {
            return Some(record(state, &holder, &key, result));
        }
        let id = (instance.clone(), request);
        lock(state).requests.insert(id.clone(), queued());
        let owner = self.clone();
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let result = outcome.await;
            let reply = record(&task_state, &holder, &key, result);
            owner.send_late(&instance, request, key, reply).await;
        });
        // Unless already answered, the task can now be stopped if its asker gives up.
        if let Some(Known::Queued { task: slot, .. }) = lock(state).requests.get_mut(&id) {
            *slot = Some(task.abort_handle());
        }
        None
    }

    async fn send_late(&self, instance: &str, request: u64, key: String, reply: Reply) {
        let late = Late {
            limit: self.limit.clone(),
            request,
            key,
            reply,
        };
        let _ = self
            .client
            .publish(wire::inbox(instance), wire::encode(&late).into())
            .await;
    }

    fn heartbeat(
        &self,
        state: &Arc<Mutex<State>>,
        instance: &str,
        holders: &[(HolderId, String)],
        waiting: &[u64],
    ) -> Reply {
        let mut state = lock(state);
        let now = state.now();
        let changes = state
            .holders
            .heartbeat(instance, holders, now, self.settings.renew_every());
        for (holder, key) in &changes.adopt {
            self.grantor.adopt(&self.limit, key, holder);
        }
        for (holder, key) in &changes.free {
            self.grantor.release(&self.limit, key, holder);
        }
        // Requests the instance no longer waits for (their caller gave up) leave the line,
        // unless they may have been queued after the heartbeat left.
        let waiting_now: HashSet<u64> = waiting.iter().copied().collect();
        state.requests.retain(|(from, request), known| {
            let Known::Queued {
                since,
                task: Some(task),
            } = known
            else {
                return true;
            };
            let abandoned = from == instance
                && !waiting_now.contains(request)
                && since.elapsed() >= ABANDONED_AFTER;
            if abandoned {
                task.abort();
            }
            !abandoned
        });
        // One key for every lookup: only its request number changes.
        let mut id = (instance.to_string(), 0);
        let unknown = waiting
            .iter()
            .copied()
            .filter(|r| {
                id.1 = *r;
                !matches!(state.requests.get(&id), Some(Known::Queued { .. }))
            })
            .collect();
        let waiters = state
            .requests
            .values()
            .filter(|k| matches!(k, Known::Queued { .. }))
            .count();
        Reply::Alive {
            owner: self.instance.clone(),
            unknown,
            holders: state.holders.held(),
            waiters,
        }
    }

    /// Frees the slots of instances silent for a lease (less one sweep, so they are back
    /// within the lease).
    fn sweep(&self, state: &Arc<Mutex<State>>) {
        let lease = self.settings.lease();
        let silent = lease - SWEEP;
        let mut state = lock(state);
        let now = state.now();
        for (holder, key) in state.holders.expire(now, silent) {
            tracing::info!(limit = %self.limit, instance = %holder.instance, "freeing the slot of a silent instance");
            self.grantor.release(&self.limit, &key, &holder);
        }
    }
}

/// A request just queued; its waiting task, if any, is recorded once spawned.
fn queued() -> Known {
    Known::Queued {
        since: Instant::now(),
        task: None,
    }
}

/// Forgets answers older than a lease: a resend comes within a few answer timeouts.
fn forget_answers(state: &Mutex<State>, lease: Duration) {
    lock(state).requests.retain(|_, known| match known {
        Known::Queued { .. } => true,
        Known::Done(_, at) => at.elapsed() < lease,
    });
}

/// Records an acquisition's outcome and returns the answer for it.
fn record(
    state: &Arc<Mutex<State>>,
    holder: &HolderId,
    key: &str,
    result: Result<Grant, Refusal>,
) -> Reply {
    let mut state = lock(state);
    let reply = match result {
        Ok(grant) => {
            if grant.slot {
                let now = state.now();
                state.holders.granted(holder, key, now);
            }
            Reply::Granted { slot: grant.slot }
        }
        Err(Refusal::Busy { retry_after }) => Reply::Refused {
            retry_after_ms: retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        },
        Err(Refusal::Closed) => Reply::Moved,
    };
    let id = (holder.instance.clone(), holder.request);
    if reply == Reply::Moved {
        state.requests.remove(&id);
    } else {
        state
            .requests
            .insert(id, Known::Done(reply.clone(), Instant::now()));
    }
    reply
}
