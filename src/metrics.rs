//! Prometheus metrics: executions, errors, durations, throttling and bus health.
//!
//! A small hand-written registry: the label sets are few and known (workspace,
//! slug, limit), and the text format is simple, so a metrics crate would add
//! more machinery than it saves. Counters sit in one mutex-protected map per
//! family; the render walks them in sorted order for stable output.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the execution duration histogram.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Families {
    executions: BTreeMap<(String, String), u64>,
    errors: BTreeMap<(String, String), u64>,
    durations: BTreeMap<String, Histogram>,
    throttled: BTreeMap<(String, &'static str), (f64, u64)>,
    budgets: BTreeMap<(String, &'static str), u64>,
    /// Credits used in the current cycle and the band number (0: below every band).
    quotas: BTreeMap<String, (f64, usize)>,
    restricted: BTreeMap<(String, String), u64>,
    fallbacks: BTreeMap<(String, String), u64>,
}

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    families: Mutex<Families>,
    bus_pending: AtomicU64,
    bus_redeliveries: AtomicU64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Families) -> R) -> R {
        f(&mut self.families.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts one finished execution.
    pub fn execution(&self, workspace: &str, slug: &str, duration: Duration, failed: bool) {
        let secs = duration.as_secs_f64();
        self.with(|f| {
            let key = (workspace.to_string(), slug.to_string());
            if failed {
                *f.errors.entry(key.clone()).or_default() += 1;
            }
            *f.executions.entry(key).or_default() += 1;
            let h = f.durations.entry(workspace.to_string()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    /// Counts one wait on a limiter.
    pub fn throttled(&self, workspace: &str, limit: &'static str, waited: Duration) {
        self.with(|f| {
            let e = f
                .throttled
                .entry((workspace.to_string(), limit))
                .or_default();
            e.0 += waited.as_secs_f64();
            e.1 += 1;
        });
    }

    /// Counts an execution that failed by going over one of its budgets.
    pub fn budget_exceeded(&self, workspace: &str, budget: &'static str) {
        self.with(|f| {
            *f.budgets
                .entry((workspace.to_string(), budget))
                .or_default() += 1
        });
    }

    /// Counts an execution its workspace's credit band restricted; `fallback` when it ran
    /// its `quota.fallback` instead of failing.
    pub fn quota_restricted(&self, workspace: &str, slug: &str, fallback: bool) {
        self.with(|f| {
            let key = (workspace.to_string(), slug.to_string());
            if fallback {
                *f.fallbacks.entry(key.clone()).or_default() += 1;
            }
            *f.restricted.entry(key).or_default() += 1;
        });
    }

    /// Sets a workspace's credits used in the current cycle and its band (`None`: below
    /// every band).
    pub fn set_quota(&self, workspace: &str, used: f64, band: Option<usize>) {
        self.with(|f| {
            f.quotas
                .insert(workspace.to_string(), (used, band.unwrap_or(0)));
        });
    }

    /// Forgets a removed workspace's quota figures.
    pub fn forget_quota(&self, workspace: &str) {
        self.with(|f| f.quotas.remove(workspace));
    }

    /// Sets how many events wait for their listeners on this instance.
    pub fn set_bus_pending(&self, n: u64) {
        self.bus_pending.store(n, Ordering::Relaxed);
    }

    /// Counts an event delivered again after a failure or a dead instance.
    pub fn redelivered(&self) {
        self.bus_redeliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|f| {
            render_by_slug(
                &mut out,
                "sluice_executions_total",
                "Automation executions.",
                &f.executions,
            );
            render_by_slug(
                &mut out,
                "sluice_execution_errors_total",
                "Failed automation executions.",
                &f.errors,
            );
            out.push_str("# HELP sluice_execution_duration_seconds Execution wall time, throttling included.\n# TYPE sluice_execution_duration_seconds histogram\n");
            for (ws, h) in &f.durations {
                let ws = escape(ws);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "sluice_execution_duration_seconds_bucket{{workspace=\"{ws}\",le=\"{bound}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "sluice_execution_duration_seconds_bucket{{workspace=\"{ws}\",le=\"+Inf\"}} {}\nsluice_execution_duration_seconds_sum{{workspace=\"{ws}\"}} {}\nsluice_execution_duration_seconds_count{{workspace=\"{ws}\"}} {}",
                    h.count, h.sum, h.count
                );
            }
            out.push_str("# HELP sluice_throttled_seconds_total Time spent waiting on limiters.\n# TYPE sluice_throttled_seconds_total counter\n");
            for ((ws, limit), (secs, _)) in &f.throttled {
                let _ = writeln!(
                    out,
                    "sluice_throttled_seconds_total{{workspace=\"{}\",limit=\"{limit}\"}} {secs}",
                    escape(ws)
                );
            }
            out.push_str("# HELP sluice_throttle_waits_total Waits on limiters.\n# TYPE sluice_throttle_waits_total counter\n");
            for ((ws, limit), (_, n)) in &f.throttled {
                let _ = writeln!(
                    out,
                    "sluice_throttle_waits_total{{workspace=\"{}\",limit=\"{limit}\"}} {n}",
                    escape(ws)
                );
            }
            out.push_str("# HELP sluice_budget_exceeded_total Executions failed by going over a budget (a failing callee counts for its callers too).\n# TYPE sluice_budget_exceeded_total counter\n");
            for ((ws, budget), n) in &f.budgets {
                let _ = writeln!(
                    out,
                    "sluice_budget_exceeded_total{{workspace=\"{}\",budget=\"{budget}\"}} {n}",
                    escape(ws)
                );
            }
            render_quotas(&mut out, f);
        });
        let _ = writeln!(
            out,
            "# HELP sluice_bus_pending_events Events taken by this instance whose listeners have not finished.\n# TYPE sluice_bus_pending_events gauge\nsluice_bus_pending_events {}",
            self.bus_pending.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sluice_bus_redeliveries_total Events delivered again after a failure or a lost instance.\n# TYPE sluice_bus_redeliveries_total counter\nsluice_bus_redeliveries_total {}",
            self.bus_redeliveries.load(Ordering::Relaxed)
        );
        out
    }
}

/// A counter family by workspace and automation slug.
fn render_by_slug(
    out: &mut String,
    name: &str,
    help: &str,
    family: &BTreeMap<(String, String), u64>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for ((ws, slug), n) in family {
        let _ = writeln!(
            out,
            "{name}{{workspace=\"{}\",slug=\"{}\"}} {n}",
            escape(ws),
            escape(slug)
        );
    }
}

/// A family of type `kind` by workspace.
fn render_by_workspace<'a, T: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    rows: impl IntoIterator<Item = (&'a String, T)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (ws, value) in rows {
        let _ = writeln!(out, "{name}{{workspace=\"{}\"}} {value}", escape(ws));
    }
}

/// The credit-quota families.
fn render_quotas(out: &mut String, f: &Families) {
    render_by_workspace(
        out,
        "sluice_quota_credits_used_total",
        "Credits used in the current cycle (reset when a cycle starts).",
        "counter",
        f.quotas.iter().map(|(ws, (used, _))| (ws, used)),
    );
    render_by_workspace(
        out,
        "sluice_quota_band",
        "The workspace's credit band (0: below every band).",
        "gauge",
        f.quotas.iter().map(|(ws, (_, band))| (ws, band)),
    );
    render_by_slug(
        out,
        "sluice_quota_restricted_total",
        "Executions whose class their credit band restricted.",
        &f.restricted,
    );
    render_by_slug(
        out,
        "sluice_quota_fallbacks_total",
        "Restricted executions that ran their quota.fallback.",
        &f.fallbacks,
    );
}

/// The named limits' families (SPEC section 7), from their live counters, by workspace
/// and limit; the shared limits come under `workspace=""`, their counters covering all.
pub fn render_named(limits: &[(String, Vec<crate::limits::named::LimitView>)]) -> String {
    type Field = fn(&crate::limits::named::Snapshot) -> String;
    let families: [(&str, &str, &str, Field); 7] = [
        (
            "sluice_named_limit_waits_total",
            "counter",
            "Acquisitions of a named limit that waited.",
            |s| s.waits.to_string(),
        ),
        (
            "sluice_named_limit_wait_seconds_total",
            "counter",
            "Time waited on a named limit.",
            |s| s.wait_seconds.to_string(),
        ),
        (
            "sluice_named_limit_refusals_total",
            "counter",
            "Acquisitions a named limit refused (LimitExceeded).",
            |s| s.refusals.to_string(),
        ),
        (
            "sluice_named_limit_slots_held",
            "gauge",
            "Concurrency slots of a named limit held now.",
            |s| s.held.to_string(),
        ),
        (
            "sluice_named_limit_waiters",
            "gauge",
            "Acquisitions waiting for a named limit now.",
            |s| s.waiters.values().sum::<usize>().to_string(),
        ),
        (
            "sluice_named_limit_cluster_holders",
            "gauge",
            "Slots of a cluster limit held across every instance (0 for instance limits).",
            |s| s.cluster.as_ref().map_or(0, |c| c.holders).to_string(),
        ),
        (
            "sluice_named_limit_cluster_waiters",
            "gauge",
            "Acquisitions of a cluster limit waiting across every instance (0 for instance limits).",
            |s| s.cluster.as_ref().map_or(0, |c| c.waiters).to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (ws, views) in limits {
            for v in views {
                let _ = writeln!(
                    out,
                    "{name}{{workspace=\"{}\",limit=\"{}\"}} {}",
                    escape(ws),
                    escape(&v.name),
                    field(&v.state)
                );
            }
        }
    }
    out.push_str("# HELP sluice_named_limit_cluster_owner The instance that grants a cluster limit (value 1).\n# TYPE sluice_named_limit_cluster_owner gauge\n");
    for (ws, views) in limits {
        for v in views {
            if let Some(c) = &v.state.cluster {
                let _ = writeln!(
                    out,
                    "sluice_named_limit_cluster_owner{{workspace=\"{}\",limit=\"{}\",owner=\"{}\"}} 1",
                    escape(ws),
                    escape(&v.name),
                    escape(&c.owner)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_throttling() {
        let m = Metrics::default();
        m.execution("ws", "hello", Duration::from_millis(3), false);
        m.execution("ws", "hello", Duration::from_millis(30), true);
        m.throttled("ws", "emits", Duration::from_millis(250));
        m.budget_exceeded("ws", "max_depth");
        m.quota_restricted("ws", "premium", true);
        m.quota_restricted("ws", "premium", false);
        m.set_quota("ws", 12.5, Some(2));
        let text = m.render();
        assert!(text.contains("sluice_quota_credits_used_total{workspace=\"ws\"} 12.5"));
        assert!(text.contains("sluice_quota_band{workspace=\"ws\"} 2"));
        assert!(text.contains("sluice_quota_restricted_total{workspace=\"ws\",slug=\"premium\"} 2"));
        assert!(text.contains("sluice_quota_fallbacks_total{workspace=\"ws\",slug=\"premium\"} 1"));
        assert!(text.contains("sluice_executions_total{workspace=\"ws\",slug=\"hello\"} 2"));
        assert!(text.contains("sluice_execution_errors_total{workspace=\"ws\",slug=\"hello\"} 1"));
        assert!(text
            .contains("sluice_execution_duration_seconds_bucket{workspace=\"ws\",le=\"0.005\"} 1"));
        assert!(text.contains("sluice_execution_duration_seconds_count{workspace=\"ws\"} 2"));
        assert!(
            text.contains("sluice_throttled_seconds_total{workspace=\"ws\",limit=\"emits\"} 0.25")
        );
        assert!(text.contains("sluice_throttle_waits_total{workspace=\"ws\",limit=\"emits\"} 1"));
        assert!(
            text.contains("sluice_budget_exceeded_total{workspace=\"ws\",budget=\"max_depth\"} 1")
        );
    }
}
