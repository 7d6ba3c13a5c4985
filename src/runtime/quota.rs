//! Credit quotas in executions (SPEC section 8): the gate an execution passes before it
//! starts (restricted classes run their `fallback` or fail with `QuotaExceeded`), the
//! charges of its `quota.cost`, of `charge`, and of built-in limit tokens when
//! `quotas.costs` price them, and the band's `slow` on the workspace's rates.
//!
//! A runtime without quotas (unit tests, `sluice run`) skips all of it with one check.

use super::exec::Exec;
use super::{ErrorKind, ExecError, Execution, Inner, Instruction, Runtime};
use crate::limits::{LimitKind, WorkspaceLimits};
use crate::quota::settings::Costs;
use crate::quota::{QuotaClass, Quotas};
use crate::value::Value;
use chrono::Utc;
use std::time::Duration;

/// The quotas a runtime charges, and the token prices when any is not zero.
pub(super) struct QuotaRt {
    quotas: Quotas,
    /// `None` when every built-in token is free, so taking one costs no look-up.
    costs: Option<Costs>,
}

/// What the quota says about an execution about to start.
pub(super) struct Gate {
    /// Run `quota.fallback` instead of `do`.
    pub(super) fallback: bool,
    /// The workspace's built-in rates' factor.
    pub(super) slow: f64,
}

const OPEN: Gate = Gate {
    fallback: false,
    slow: 1.0,
};

impl Runtime {
    /// Charges and restricts executions with `quotas` from now on (once; later calls are
    /// ignored, as a runtime serves one set of quotas for its life).
    pub fn set_quotas(&self, quotas: Quotas) {
        let c = &quotas.settings().costs;
        let costs = (LimitKind::ALL.iter().any(|&k| c.of(k) > 0.0)).then(|| c.clone());
        let _ = self.inner.quotas.set(QuotaRt { quotas, costs });
    }

    /// The quotas set by [`Runtime::set_quotas`].
    pub fn quotas(&self) -> Option<&Quotas> {
        self.inner.quotas.get().map(|q| &q.quotas)
    }
}

impl Inner {
    /// Applies the `sluice_quota_*` secrets of `ws`; on an error its previous quota stays
    /// and the returned problem (naming the secret, never its value) is for the log.
    pub(super) fn apply_quota_secrets(
        &self,
        ws: &str,
        secrets: &crate::value::Map,
    ) -> Option<String> {
        let q = self.quotas.get()?;
        let e = q.quotas.apply_secrets(ws, secrets, Utc::now()).err()?;
        Some(format!("{e}; previous quota kept"))
    }

    /// Forgets the quota of a removed workspace (its pending charges are still written).
    pub(super) fn remove_quota(&self, ws: &str) {
        if let Some(q) = self.quotas.get() {
            q.quotas.remove(ws);
            self.metrics.forget_quota(ws);
        }
    }

    /// Decides whether `x` runs its body, its fallback, or fails with `QuotaExceeded`, and
    /// gives the workspace's limits at its band's `slow`. A passing execution is charged the
    /// price of its `automations` token (charged before the token is taken: same total).
    pub(super) fn quota_gate(&self, x: &Execution) -> Result<(Gate, WorkspaceLimits), ExecError> {
        let gate = self.decide(x)?;
        self.charge_tokens(&x.ws.id, &x.automation.slug, LimitKind::Automations, 1);
        let limits = self.slowed_limits(&x.ws.id, gate.slow);
        Ok((gate, limits))
    }

    /// The gate of `x` as the workspace's band has it now.
    fn decide(&self, x: &Execution) -> Result<Gate, ExecError> {
        let Some(q) = self.quotas.get() else {
            return Ok(OPEN);
        };
        let quota = x.automation.quota.as_ref();
        let class = quota.map_or(QuotaClass::Standard, |q| q.class);
        let decision = q.quotas.decision(&x.ws.id, class, Utc::now());
        let Some(r) = decision.restricted else {
            return Ok(Gate {
                fallback: false,
                slow: decision.slow,
            });
        };
        let slug = x.automation.slug.as_str();
        let fallback = quota.is_some_and(|q| q.fallback.is_some());
        self.metrics.quota_restricted(&x.ws.id, slug, fallback);
        if fallback {
            return Ok(Gate {
                fallback: true,
                slow: decision.slow,
            });
        }
        Err(ExecError {
            retry_after: Some(Duration::from_secs(r.retry_after)),
            ..ExecError::new(
                ErrorKind::QuotaExceeded,
                format!(
                    "workspace {} is in credit band {} (from {} % of its credits), which restricts {} automations such as `{slug}` until {} or until credits are added",
                    x.ws.id,
                    r.band,
                    r.at,
                    class.as_str(),
                    r.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
        })
    }

    /// The limits of `ws` at the band's `slow`, rebuilt when the band changed it.
    fn slowed_limits(&self, ws: &str, slow: f64) -> WorkspaceLimits {
        let limits = self.limits.workspace(ws);
        if limits.slow() == slow {
            return limits;
        }
        self.limits.set_slow(ws, slow);
        self.limits.workspace(ws)
    }

    /// Charges `credits` to `ws` for `slug`.
    pub(super) fn charge(&self, ws: &str, slug: &str, credits: f64) -> Result<(), ExecError> {
        let Some(q) = self.quotas.get() else {
            return Ok(());
        };
        q.quotas
            .charge(ws, slug, credits, Utc::now())
            .map_err(|e| ExecError::new(ErrorKind::InvalidInstruction, e.to_string()))
    }

    /// Charges the price of `n` tokens of `kind`, when `quotas.costs` sets one.
    #[inline]
    pub(super) fn charge_tokens(&self, ws: &str, slug: &str, kind: LimitKind, n: u32) {
        let Some(costs) = self.quotas.get().and_then(|q| q.costs.as_ref()) else {
            return;
        };
        let price = costs.of(kind) * f64::from(n);
        // Validated settings make every price a valid amount.
        if let Err(e) = self.charge(ws, slug, price) {
            tracing::warn!(workspace = ws, slug, limit = kind.as_str(), error = %e, "token cost not charged");
        }
    }
}

/// What the execution runs: its `quota.fallback` when the gate says so, else `do`, after
/// charging the automation's `quota.cost` (evaluated against its arguments now).
pub(super) fn body<'x>(
    exec: &Exec<'_>,
    x: &'x Execution,
    gate: &Gate,
) -> Result<&'x [Instruction], ExecError> {
    let quota = x.automation.quota.as_ref();
    if let Some(fallback) = quota.and_then(|q| q.fallback.as_deref()) {
        if gate.fallback {
            return Ok(fallback);
        }
    }
    if let Some(cost) = quota.and_then(|q| q.cost.as_ref()) {
        exec.charge(credits_of(&cost.eval(exec)?, "quota.cost")?)?;
    }
    Ok(&x.automation.body)
}

/// A rendered amount of credits: a finite number from 0, or text holding one.
pub(crate) fn credits_of(value: &Value, what: &str) -> Result<f64, ExecError> {
    match crate::checked::number(value) {
        Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => {
            let shown = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) if s.len() <= 64 => format!("`{s}`"),
                other => crate::dsl::describe(other),
            };
            Err(ExecError::new(
                ErrorKind::InvalidInstruction,
                format!(
                    "{what}: {shown} is not a number of credits, expected a finite number from 0"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests;
