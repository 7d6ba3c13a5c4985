//! The time one execution waited on limits, whole and per limit (`throttled`,
//! `throttledBy`), and the would-be waits of shadow limits (`shadow`), SPEC sections 5
//! and 7. Callees add theirs to their caller's, as their waits delay it too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Waits per limit, in the order the limits first made the execution wait.
pub type Waits = Vec<(Arc<str>, Duration)>;

/// What an execution waited on, shared by its instructions.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    /// Nanoseconds waited in all: read without the lock on every outcome.
    nanos: AtomicU64,
    by: Mutex<Split>,
}

#[derive(Debug, Default)]
struct Split {
    waited: Waits,
    shadow: Waits,
}

fn lock(m: &Mutex<Split>) -> MutexGuard<'_, Split> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn add(into: &mut Waits, limit: &str, d: Duration) {
    match into.iter_mut().find(|(l, _)| &**l == limit) {
        Some((_, total)) => *total += d,
        None => into.push((Arc::from(limit), d)),
    }
}

impl Throttle {
    /// Counts a wait of `d` on `limit` (a built-in kind or a named limit).
    pub(super) fn waited(&self, limit: &str, d: Duration) {
        if d.is_zero() {
            return;
        }
        self.nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        add(&mut lock(&self.by).waited, limit, d);
    }

    /// Counts what a shadow limit would have made the execution wait.
    pub(super) fn shadow(&self, limit: &str, d: Duration) {
        if !d.is_zero() {
            add(&mut lock(&self.by).shadow, limit, d);
        }
    }

    /// Adds a callee's waits.
    pub(super) fn merge(&self, waited: &Waits, shadow: &Waits) {
        for (l, d) in waited {
            self.waited(l, *d);
        }
        for (l, d) in shadow {
            self.shadow(l, *d);
        }
    }

    /// The whole wait.
    pub(super) fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// The waits per limit and the shadow waits, for the outcome.
    pub(super) fn split(&self) -> (Waits, Waits) {
        // Cloning an empty list allocates nothing: the common case costs the lock only.
        let s = lock(&self.by);
        (s.waited.clone(), s.shadow.clone())
    }
}

/// `{limit: ms}` with the entries of at least 1 ms, as executed events and reports show
/// them; `None` when there is none.
pub fn to_millis(waits: &Waits) -> Option<crate::value::Map> {
    let mut m = crate::value::Map::new();
    for (limit, d) in waits {
        let ms = d.as_millis();
        if ms >= 1 {
            m.insert(limit.to_string(), crate::value::Value::Number(ms as f64));
        }
    }
    (!m.is_empty()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_add_up_per_limit_and_short_ones_are_left_out_of_the_report() {
        let t = Throttle::default();
        t.waited("automations", Duration::from_millis(3));
        t.waited("crm", Duration::from_millis(250));
        t.waited("automations", Duration::from_millis(2));
        t.waited("tiny", Duration::from_micros(300));
        t.shadow("pilot", Duration::from_millis(40));
        assert_eq!(t.total(), Duration::from_micros(255_300));
        let (by, shadow) = t.split();
        let by = to_millis(&by).unwrap();
        assert_eq!(
            by.get("automations"),
            Some(&crate::value::Value::Number(5.0))
        );
        assert_eq!(by.get("crm"), Some(&crate::value::Value::Number(250.0)));
        assert!(by.get("tiny").is_none());
        let caller = Throttle::default();
        caller.merge(&t.split().0, &t.split().1);
        assert_eq!(caller.total(), t.total());
        assert_eq!(to_millis(&shadow).unwrap().len(), 1);
        assert_eq!(caller.split().1.len(), 1);
    }
}
