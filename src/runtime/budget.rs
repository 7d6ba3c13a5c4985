//! The interpreter's side of the execution budgets: counting instructions and
//! measuring what a write would make a variable hold, before it is written.
//!
//! Everything here runs on the hot path of every instruction and every `set`, so
//! the checks are counters and one walk of the value being written (which `set`
//! walks anyway to copy it); a variable's total size is only re-measured when a
//! write into it could push it over its budget.

use crate::limits::{BudgetExceeded, Budgets};
use crate::value::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many instructions run between two looks at the clock.
const CHECK_EVERY: u64 = 128;

/// How long an execution may run without giving the scheduler a turn, so that a
/// loop that never waits on a limiter still lets other workspaces' work run. A
/// yield costs a trip through the scheduler (microseconds), so it is paid by
/// time, not by instruction count.
const YIELD_AFTER: Duration = Duration::from_millis(1);

/// Instructions run so far by an execution and the automations it calls. A
/// callee's meter starts at its caller's count and the caller takes the
/// callee's final count back, so a loop of calls cannot multiply the budget
/// (and a plain execution pays for no shared allocation).
#[derive(Debug)]
pub(super) struct Meter {
    count: AtomicU64,
    /// When the execution started: the clock the yields are measured on.
    started: Instant,
    /// Nanoseconds after `started` of the last turn given to the scheduler.
    yielded: AtomicU64,
}

impl Meter {
    /// A meter that has already counted `n` instructions (a callee's, from its caller).
    pub(super) fn starting_at(n: u64) -> Meter {
        Meter {
            count: AtomicU64::new(n),
            started: Instant::now(),
            yielded: AtomicU64::new(0),
        }
    }

    /// The instructions counted so far.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Adds what a callee ran, from the count it started at to the count it ended at.
    pub(super) fn add_callee(&self, started: u64, ended: u64) {
        self.count
            .fetch_add(ended.saturating_sub(started), Ordering::Relaxed);
    }

    /// Counts one instruction; `Ok(true)` when the execution has run for
    /// [`YIELD_AFTER`] since its last yield and should give the scheduler a turn.
    pub(super) fn tick(&self, budgets: &Budgets) -> Result<bool, BudgetExceeded> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if n > budgets.max_instructions {
            return Err(BudgetExceeded::new(
                budgets,
                "max_instructions",
                format!(
                    "running more than {} instructions",
                    budgets.max_instructions
                ),
                n,
            ));
        }
        if !n.is_multiple_of(CHECK_EVERY) {
            return Ok(false);
        }
        let now = self.started.elapsed().as_nanos() as u64;
        let due = now.saturating_sub(self.yielded.load(Ordering::Relaxed))
            >= YIELD_AFTER.as_nanos() as u64;
        if due {
            self.yielded.store(now, Ordering::Relaxed);
        }
        Ok(due)
    }
}

/// Whether `value`, written as a whole variable, surely fits its budgets without
/// a walk: a scalar, or a string within both the string and the variable
/// budget. `false` means "measure it" (lists and objects always do), never
/// "refused". It counts sizes as [`measure`] does.
#[inline]
pub(super) fn fits_flat(value: &Value, budgets: &Budgets) -> bool {
    match value {
        Value::String(s) => {
            s.len() <= budgets.max_string_bytes && s.len() + 2 <= budgets.max_value_bytes
        }
        Value::List(_) | Value::Object(_) => false,
        _ => SCALAR_BYTES <= budgets.max_value_bytes,
    }
}

/// The most a scalar counts for in [`measure`] (a number; null and booleans
/// count 5, undefined 0).
const SCALAR_BYTES: usize = 8;

/// The size of `value` in bytes of JSON (numbers counted as 8), checking on the way
/// that no string, list or object in it is over its budget and that it nests at most
/// `max_depth - depth` levels. `depth` is how deep the value will sit in its variable.
pub(super) fn measure(
    value: &Value,
    budgets: &Budgets,
    depth: usize,
) -> Result<usize, BudgetExceeded> {
    let over_depth = |depth: usize| {
        BudgetExceeded::new(
            budgets,
            "max_depth",
            format!("a value nested more than {} levels deep", budgets.max_depth),
            depth as u64,
        )
    };
    match value {
        Value::Undefined => Ok(0),
        Value::Null | Value::Bool(_) => Ok(5),
        Value::Number(_) => Ok(SCALAR_BYTES),
        Value::String(s) => {
            check_string(s.len(), budgets)?;
            Ok(s.len() + 2)
        }
        Value::List(l) => {
            if depth >= budgets.max_depth {
                return Err(over_depth(depth + 1));
            }
            check_entries(l.len(), budgets)?;
            let mut size = 2 + l.len();
            for v in l.iter() {
                size += measure(v, budgets, depth + 1)?;
                check_size(size, budgets)?;
            }
            Ok(size)
        }
        Value::Object(m) => {
            if depth >= budgets.max_depth {
                return Err(over_depth(depth + 1));
            }
            check_entries(m.len(), budgets)?;
            let mut size = 2;
            for (k, v) in m.iter() {
                size += k.len() + 4 + measure(v, budgets, depth + 1)?;
                check_size(size, budgets)?;
            }
            Ok(size)
        }
    }
}

/// The size of a value already held, counted as [`measure`] does. Held values
/// passed the budgets when they were written (or a parser's depth limit), so
/// walking them cannot go deep.
pub(super) fn size_of(value: &Value) -> usize {
    let unbounded = Budgets {
        max_instructions: u64::MAX,
        max_string_bytes: usize::MAX,
        max_entries: usize::MAX,
        max_value_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_list_index: usize::MAX,
        max_regex_bytes: usize::MAX,
        max_wait_secs: u64::MAX,
    };
    measure(value, &unbounded, 0).unwrap_or(usize::MAX)
}

/// Refuses a string longer than `max_string_bytes`.
pub(super) fn check_string(len: usize, budgets: &Budgets) -> Result<(), BudgetExceeded> {
    if len > budgets.max_string_bytes {
        return Err(BudgetExceeded::new(
            budgets,
            "max_string_bytes",
            format!("a string of {len} bytes"),
            len as u64,
        ));
    }
    Ok(())
}

/// Refuses a list or object with more than `max_entries` entries.
pub(super) fn check_entries(len: usize, budgets: &Budgets) -> Result<(), BudgetExceeded> {
    if len > budgets.max_entries {
        return Err(BudgetExceeded::new(
            budgets,
            "max_entries",
            format!("a list or object of {len} entries"),
            len as u64,
        ));
    }
    Ok(())
}

/// Refuses a variable of more than `max_value_bytes` bytes of JSON.
pub(super) fn check_size(size: usize, budgets: &Budgets) -> Result<(), BudgetExceeded> {
    if size > budgets.max_value_bytes {
        return Err(BudgetExceeded::new(
            budgets,
            "max_value_bytes",
            format!("a variable of more than {size} bytes of JSON"),
            size as u64,
        ));
    }
    Ok(())
}

/// Refuses writing list index `index` (the list grows to `index + 1` entries).
pub(super) fn check_index(index: usize, budgets: &Budgets) -> Result<(), BudgetExceeded> {
    if index > budgets.max_list_index {
        return Err(BudgetExceeded::new(
            budgets,
            "max_list_index",
            format!("writing list index {index}"),
            index as u64,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> Budgets {
        Budgets {
            max_instructions: 300,
            max_string_bytes: 10,
            max_entries: 3,
            max_value_bytes: 40,
            max_depth: 2,
            max_list_index: 5,
            ..Budgets::default()
        }
    }

    #[test]
    fn the_meter_yields_after_a_millisecond_of_work_and_stops_at_the_budget() {
        let meter = Meter::starting_at(0);
        for _ in 0..128 {
            meter.tick(&small()).expect("within budget");
        }
        // The clock is only read every CHECK_EVERY instructions: after a
        // millisecond's pause, exactly the next reading asks for a yield.
        std::thread::sleep(YIELD_AFTER);
        let yields = (128..256)
            .filter(|_| meter.tick(&small()).expect("within budget"))
            .count();
        assert_eq!(yields, 1);
        for _ in 256..290 {
            meter.tick(&small()).expect("within budget");
        }
        let callee = Meter::starting_at(meter.count());
        for _ in 0..10 {
            callee.tick(&small()).expect("within budget");
        }
        meter.add_callee(290, callee.count());
        assert_eq!(meter.count(), 300);
        let e = meter.tick(&small()).unwrap_err();
        assert_eq!(e.name, "max_instructions");
        assert!(e.to_string().contains("more than 300 instructions"), "{e}");
    }

    #[test]
    fn measure_sizes_values_as_json() {
        let b = Budgets::default();
        let v = Value::from(json!({"a": [1, "xy", null]}));
        // {"a":[1,"xy",null]} is 19 bytes; numbers count as 8.
        assert_eq!(measure(&v, &b, 0).unwrap(), 2 + 1 + 4 + 2 + 3 + 8 + 4 + 5);
    }

    #[test]
    fn measure_refuses_each_budget_by_name() {
        let name = |v: serde_json::Value, depth| {
            measure(&Value::from(v), &small(), depth)
                .map(|_| ())
                .unwrap_err()
                .name
        };
        assert_eq!(name(json!("01234567890"), 0), "max_string_bytes");
        assert_eq!(name(json!([1, 2, 3, 4]), 0), "max_entries");
        assert_eq!(name(json!([[[1]]]), 0), "max_depth");
        assert_eq!(name(json!([1]), 2), "max_depth");
        assert_eq!(
            name(json!(["0123456789", "0123456789", "0123456789"]), 0),
            "max_value_bytes"
        );
        assert!(measure(&Value::from(json!([[1]])), &small(), 0).is_ok());
    }

    #[test]
    fn a_flat_fit_is_one_that_measure_accepts() {
        let tight = Budgets {
            max_value_bytes: 12,
            ..small()
        };
        for v in [
            json!(null),
            json!(true),
            json!(1.5),
            json!(""),
            json!("0123456789"),
            json!("01234567890"),
            json!([1]),
        ] {
            let v = Value::from(v);
            for b in [small(), tight] {
                let accepted = measure(&v, &b, 0).is_ok_and(|n| check_size(n, &b).is_ok());
                assert!(!fits_flat(&v, &b) || accepted, "{v:?}");
            }
        }
        assert!(fits_flat(&Value::str("0123456789"), &tight));
        assert!(!fits_flat(
            &Value::str("0123456789"),
            &Budgets {
                max_value_bytes: 11,
                ..tight
            }
        ));
    }

    #[test]
    fn indexes_past_the_budget_are_refused() {
        assert!(check_index(5, &small()).is_ok());
        assert_eq!(check_index(6, &small()).unwrap_err().name, "max_list_index");
    }
}
