//! The owner's view of held slots: which instance holds which, and when it last said so.
//!
//! A slot is a lease: the holding instance heartbeats its list every third of `lease_secs`;
//! an instance silent for `lease_secs` is taken for dead and its slots are freed. The
//! heartbeats also repair the two ways the owner's view can drift: a slot granted by a
//! previous owner is adopted, and a slot the instance no longer lists (its release was lost)
//! is freed once it is old enough that the heartbeat cannot predate the grant.
//!
//! Pure bookkeeping on times passed in, so the tests drive it without a clock.

use super::HolderId;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Held slots by instance.
#[derive(Default, Debug)]
pub(super) struct Holders {
    instances: HashMap<String, Instance>,
}

#[derive(Default, Debug)]
struct Instance {
    last_seen: Duration,
    /// Request number → (key, when granted or adopted).
    held: HashMap<u64, (String, Duration)>,
}

/// What a heartbeat changes in the owner's limiter.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// Slots to record as held (granted by a previous owner).
    pub adopt: Vec<(HolderId, String)>,
    /// Slots to free (the instance no longer holds them).
    pub free: Vec<(HolderId, String)>,
}

impl Holders {
    /// Records a slot granted at `now`.
    pub(super) fn granted(&mut self, holder: &HolderId, key: &str, now: Duration) {
        // A grant does not prove the instance alive (it may have been queued before it died):
        // only a new instance gets a lease period from now to heartbeat.
        let instance = self
            .instances
            .entry(holder.instance.clone())
            .or_insert_with(|| Instance {
                last_seen: now,
                held: HashMap::new(),
            });
        instance.held.insert(holder.request, (key.to_string(), now));
    }

    /// Forgets a released slot; returns its key if it was held.
    pub(super) fn released(&mut self, holder: &HolderId) -> Option<String> {
        let instance = self.instances.get_mut(&holder.instance)?;
        instance.held.remove(&holder.request).map(|(key, _)| key)
    }

    /// Records `instance`'s heartbeat listing `listed`, at `now`. Slots it holds that are
    /// not listed and older than `grace` are freed (the heartbeat may have left before a
    /// younger grant arrived).
    pub(super) fn heartbeat(
        &mut self,
        instance: &str,
        listed: &[(HolderId, String)],
        now: Duration,
        grace: Duration,
    ) -> Changes {
        let entry = self.instances.entry(instance.to_string()).or_default();
        entry.last_seen = now;
        let mut changes = Changes::default();
        let mut listed_requests = HashSet::with_capacity(listed.len());
        for (holder, key) in listed {
            if holder.instance != instance {
                continue;
            }
            listed_requests.insert(holder.request);
            if let std::collections::hash_map::Entry::Vacant(slot) =
                entry.held.entry(holder.request)
            {
                slot.insert((key.clone(), now));
                changes.adopt.push((holder.clone(), key.clone()));
            }
        }
        entry.held.retain(|request, (key, since)| {
            let keep = listed_requests.contains(request) || now.saturating_sub(*since) < grace;
            if !keep {
                changes.free.push((
                    HolderId {
                        instance: instance.to_string(),
                        request: *request,
                    },
                    key.clone(),
                ));
            }
            keep
        });
        changes
    }

    /// Frees the slots of instances silent for `lease` or more at `now`.
    pub(super) fn expire(&mut self, now: Duration, lease: Duration) -> Vec<(HolderId, String)> {
        let mut freed = Vec::new();
        self.instances.retain(|name, instance| {
            if now.saturating_sub(instance.last_seen) < lease {
                return true;
            }
            freed.extend(instance.held.drain().map(|(request, (key, _))| {
                (
                    HolderId {
                        instance: name.clone(),
                        request,
                    },
                    key,
                )
            }));
            false
        });
        freed
    }

    /// How many slots are held across the cluster.
    pub(super) fn held(&self) -> usize {
        self.instances.values().map(|i| i.held.len()).sum()
    }
}
