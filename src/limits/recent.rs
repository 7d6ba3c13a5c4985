//! Time waited on each limit over the last five minutes, per workspace, for the operator
//! page. Ten slots of 30 s per kind, each stamped with the slot it counts, so a read sums
//! the slots still inside the window and a write reuses a stale slot: no lock, no timer.

use super::LimitKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many slots the window has.
const SLOTS: usize = 10;
/// Nanoseconds one slot covers.
const SLOT_NANOS: u64 = 30_000_000_000;

/// The window's length.
pub const WINDOW: Duration = Duration::from_nanos(SLOT_NANOS * SLOTS as u64);

/// One kind's slots: `stamps[i]` is the slot number `waited[i]` counts for.
#[derive(Default)]
struct Slots {
    stamps: [AtomicU64; SLOTS],
    waited: [AtomicU64; SLOTS],
}

/// The recent waits of one workspace.
#[derive(Default)]
pub(super) struct RecentWaits {
    kinds: [Slots; 4],
}

impl RecentWaits {
    /// Adds a wait that ended at `now` (nanoseconds on the limiters' clock).
    pub(super) fn add(&self, kind: LimitKind, waited: Duration, now: u64) {
        let slots = &self.kinds[kind.index()];
        // Slot numbers start at 1 so that a zeroed stamp never counts as current.
        let slot = now / SLOT_NANOS + 1;
        let i = (slot % SLOTS as u64) as usize;
        let nanos = super::clock::nanos(waited);
        let stamp = slots.stamps[i].load(Ordering::Acquire);
        if stamp != slot
            && slots.stamps[i]
                .compare_exchange(stamp, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This caller turned the slot over: it starts the new slot's count. A wait added
            // by another caller between the swap and this store is lost, which a display of
            // recent activity can afford.
            slots.waited[i].store(nanos, Ordering::Release);
            return;
        }
        slots.waited[i].fetch_add(nanos, Ordering::AcqRel);
    }

    /// The waits on `kind` within the window ending at `now`.
    pub(super) fn sum(&self, kind: LimitKind, now: u64) -> Duration {
        let slots = &self.kinds[kind.index()];
        let current = now / SLOT_NANOS + 1;
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        let nanos = (0..SLOTS)
            .filter(|&i| (oldest..=current).contains(&slots.stamps[i].load(Ordering::Acquire)))
            .map(|i| slots.waited[i].load(Ordering::Acquire))
            .fold(0u64, u64::saturating_add);
        Duration::from_nanos(nanos)
    }

    /// Whether every wait is older than the window, so forgetting them loses nothing.
    pub(super) fn is_stale(&self, now: u64) -> bool {
        LimitKind::ALL
            .into_iter()
            .all(|k| self.sum(k, now).is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn waits_count_for_five_minutes_then_drop_out() {
        let r = RecentWaits::default();
        r.add(LimitKind::Emits, Duration::from_secs(2), 10 * SEC);
        r.add(LimitKind::Emits, Duration::from_secs(3), 100 * SEC);
        r.add(LimitKind::Fetchs, Duration::from_secs(1), 100 * SEC);
        assert_eq!(r.sum(LimitKind::Emits, 100 * SEC), Duration::from_secs(5));
        assert_eq!(r.sum(LimitKind::Fetchs, 100 * SEC), Duration::from_secs(1));
        assert_eq!(r.sum(LimitKind::Repeats, 100 * SEC), Duration::ZERO);
        // 10 s fell in slot 0 (0-30 s): out of the window once the window starts after it.
        assert_eq!(r.sum(LimitKind::Emits, 300 * SEC), Duration::from_secs(3));
        assert_eq!(r.sum(LimitKind::Emits, 400 * SEC), Duration::ZERO);
        assert!(r.is_stale(400 * SEC));
        assert!(!r.is_stale(300 * SEC));
    }

    #[test]
    fn a_slot_reused_after_a_full_turn_starts_from_zero() {
        let r = RecentWaits::default();
        r.add(LimitKind::Automations, Duration::from_secs(7), 5 * SEC);
        // 305 s maps to the same slot index, ten slots later.
        r.add(LimitKind::Automations, Duration::from_secs(1), 305 * SEC);
        assert_eq!(
            r.sum(LimitKind::Automations, 305 * SEC),
            Duration::from_secs(1)
        );
    }
}
