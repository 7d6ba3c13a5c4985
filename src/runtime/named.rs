//! Named limits (SPEC section 7) as the runtime holds them: the operator's shared
//! registry, one registry per workspace that outlives reloads of its files, and the
//! list of every place an automation uses a limit (its `limits:` entries and its
//! `acquire` instructions) for the checks that need every declaration.

use super::Inner;
use super::Workspace;
use crate::config::Settings;
use crate::limits::clock::TimeSource;
use crate::limits::named::{LimitView, NamedLimits};

/// The operator's shared limits. `Settings::load` has checked them; settings built by
/// hand with bad ones get none, said once in the log.
pub(super) fn shared(settings: &Settings, time: TimeSource) -> NamedLimits {
    let shared = NamedLimits::shared(time);
    match settings.shared_limits() {
        Ok(specs) => shared.update(specs),
        Err(errors) => {
            for e in errors {
                tracing::error!("shared_limits: {e}; that section is ignored");
            }
        }
    }
    shared
}

impl Inner {
    /// The problems of `ws`'s named limits that need the shared limits to be seen.
    pub(super) fn named_problems(&self, ws: &Workspace) -> Vec<crate::dsl::Diagnostic> {
        ws.limit_diagnostics(&self.settings.shared_limits().unwrap_or_default())
    }

    /// Gives `ws` its registry of named limits, keeping the state of the one it had
    /// (live change, SPEC section 7).
    pub(super) fn install_named(&self, ws: &mut Workspace) {
        let registry = {
            let mut map = self.named.write().unwrap_or_else(|p| p.into_inner());
            map.entry(ws.id.clone())
                .or_insert_with(|| {
                    NamedLimits::workspace(&ws.id, Some(&self.shared), self.limits.time())
                })
                .clone()
        };
        // A limit that takes a shared name is left out: the shared one keeps the name.
        let shared = self.shared.names();
        let own = ws
            .limits
            .iter()
            .filter(|l| !shared.contains(&l.name))
            .cloned()
            .collect();
        registry.update(own);
        ws.named = Some(registry);
    }

    /// Forgets the named limits of a removed workspace.
    pub(super) fn remove_named(&self, id: &str) {
        self.named
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Forgets idle keys of every named limit (run every few seconds by the server).
    pub(super) fn sweep_named(&self) -> usize {
        let registries: Vec<NamedLimits> = self
            .named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        registries.iter().map(NamedLimits::sweep).sum::<usize>() + self.shared.sweep()
    }
}

/// The limits a workspace sees, for the operator view: its own (with the inline ones)
/// and the shared ones, each marked.
pub struct WorkspaceLimitsView {
    /// The workspace's own limits, then `inline`.
    pub own: Vec<LimitView>,
    /// The operator's shared limits (their counters cover every workspace).
    pub shared: Vec<LimitView>,
}

impl super::Runtime {
    /// The named limits of workspace `id`, or `None` when it is not loaded.
    pub fn named_limits(&self, id: &str) -> Option<WorkspaceLimitsView> {
        let own = self
            .inner
            .named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()?;
        let mut shared = self.inner.shared.snapshot();
        // The shared registry's own inline entry is never used: workspaces keep theirs.
        shared.retain(|v| v.spec.is_some());
        Some(WorkspaceLimitsView {
            own: own.snapshot(),
            shared,
        })
    }

    /// Every workspace's named limits, for `/metrics`.
    pub fn all_named_limits(&self) -> Vec<(String, Vec<LimitView>)> {
        let registries: Vec<(String, NamedLimits)> = self
            .inner
            .named
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut all: Vec<(String, Vec<LimitView>)> = registries
            .into_iter()
            .map(|(id, r)| (id, r.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut shared = self.inner.shared.snapshot();
        shared.retain(|v| v.spec.is_some());
        if !shared.is_empty() {
            all.push((String::new(), shared));
        }
        all
    }

    /// Forgets idle keys of every named limit; returns how many.
    pub fn sweep_named(&self) -> usize {
        self.inner.sweep_named()
    }

    /// Enforces every `scope: cluster` limit (shared or of a workspace) across the cluster
    /// through `cluster`: workspace registries ask through their shared registry's handle.
    pub fn attach_cluster(&self, cluster: std::sync::Arc<crate::limits::cluster::ClusterLimits>) {
        self.inner.shared.attach_cluster(cluster);
    }
}
