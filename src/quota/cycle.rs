//! Billing cycles: calendar months that start on a day of the month at 00:00 in the
//! workspace's time zone (SPEC section 8).
//!
//! Calendars are where billing systems go wrong (month ends, time zones, daylight saving),
//! so the rules live here alone: a day beyond a short month means that month's last day; a
//! local midnight that does not exist (clocks jump forward over it) means the first instant
//! after the jump; a midnight that happens twice (clocks go back) means the earlier one.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// When a workspace's cycles start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleRule {
    day: u32,
    zone: Tz,
}

/// One billing cycle: `[start, end)` in UTC, named by its local start date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// Its id: the local date it starts on, `YYYY-MM-DD`.
    pub id: String,
    /// Its first instant.
    pub start: DateTime<Utc>,
    /// The first instant of the next cycle.
    pub end: DateTime<Utc>,
}

impl Cycle {
    /// Whether `now` falls in this cycle.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && now < self.end
    }
}

impl CycleRule {
    /// Cycles starting on `day` (clamped to 1..=31) at 00:00 in `zone`.
    pub fn new(day: u32, zone: Tz) -> CycleRule {
        CycleRule {
            day: day.clamp(1, 31),
            zone,
        }
    }

    /// The day of the month cycles start on.
    pub fn day(&self) -> u32 {
        self.day
    }

    /// The time zone of the cycles.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The cycle that contains `now`.
    pub fn containing(&self, now: DateTime<Utc>) -> Cycle {
        let local = now.with_timezone(&self.zone);
        let (year, month) = (local.year(), local.month());
        let this = self.start_in(year, month);
        if now >= this.1 {
            let (ny, nm) = next_month(year, month);
            Cycle {
                id: this.0.format("%Y-%m-%d").to_string(),
                start: this.1,
                end: self.start_in(ny, nm).1,
            }
        } else {
            let (py, pm) = previous_month(year, month);
            let previous = self.start_in(py, pm);
            Cycle {
                id: previous.0.format("%Y-%m-%d").to_string(),
                start: previous.1,
                end: this.1,
            }
        }
    }

    /// The cycle named `id` (`YYYY-MM-DD`), or `None` when no cycle of this rule starts on
    /// that date.
    pub fn by_id(&self, id: &str) -> Option<Cycle> {
        let date = NaiveDate::parse_from_str(id, "%Y-%m-%d").ok()?;
        let (date, start) = self.start_in(date.year(), date.month());
        if date.format("%Y-%m-%d").to_string() != id {
            return None;
        }
        Some(self.containing(start))
    }

    /// The local start date and the instant of the cycle that starts in `year`-`month`.
    fn start_in(&self, year: i32, month: u32) -> (NaiveDate, DateTime<Utc>) {
        let day = self.day.min(days_in_month(year, month));
        // Every month has days 1..=days_in_month, so the date exists.
        let date = NaiveDate::from_ymd_opt(year, month, day).unwrap_or(NaiveDate::MIN);
        (
            date,
            first_instant_at(self.zone, date.and_hms_opt(0, 0, 0).unwrap_or_default()),
        )
    }
}

/// The instant the clocks of `zone` first show `local`, or the first instant after it when
/// they skip it.
fn first_instant_at(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, later) => earlier.min(later).with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the jump is the first valid instant after, and it shows the first
            // existing local time. Transitions fall on whole minutes and last at most a day.
            (1..=24 * 60)
                .find_map(
                    |m| match zone.from_local_datetime(&(local + Duration::minutes(m))) {
                        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
                        LocalResult::None => None,
                    },
                )
                .unwrap_or_else(|| Utc.from_utc_datetime(&local))
        }
    }
}

fn next_month(year: i32, month: u32) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn previous_month(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = next_month(year, month);
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rule(day: u32, zone: &str) -> CycleRule {
        CycleRule::new(day, zone.parse().unwrap())
    }

    fn check(rule: CycleRule, now: &str, id: &str, start: &str, end: &str) {
        let c = rule.containing(utc(now));
        assert_eq!(
            (c.id.as_str(), c.start, c.end),
            (id, utc(start), utc(end)),
            "cycle of {now}"
        );
        assert!(c.contains(utc(now)));
    }

    #[test]
    fn paris_cycles_span_the_spring_change_an_hour_short() {
        // Paris is UTC+1 in March and UTC+2 from 2026-03-29 02:00.
        let r = rule(1, "Europe/Paris");
        check(
            r,
            "2026-03-15T12:00:00Z",
            "2026-03-01",
            "2026-02-28T23:00:00Z",
            "2026-03-31T22:00:00Z",
        );
        let c = r.containing(utc("2026-03-15T12:00:00Z"));
        assert_eq!(c.end - c.start, Duration::days(31) - Duration::hours(1));
    }

    #[test]
    fn new_york_cycles_span_the_autumn_change_an_hour_long() {
        // New York is UTC-4 until 2026-11-01 02:00, then UTC-5.
        let r = rule(1, "America/New_York");
        check(
            r,
            "2026-11-01T12:00:00Z",
            "2026-11-01",
            "2026-11-01T04:00:00Z",
            "2026-12-01T05:00:00Z",
        );
        let c = r.containing(utc("2026-11-01T12:00:00Z"));
        assert_eq!(c.end - c.start, Duration::days(30) + Duration::hours(1));
        // Still October in New York: the previous cycle.
        check(
            r,
            "2026-11-01T03:59:59Z",
            "2026-10-01",
            "2026-10-01T04:00:00Z",
            "2026-11-01T04:00:00Z",
        );
    }

    #[test]
    fn the_boundary_instant_belongs_to_the_new_cycle() {
        let r = rule(1, "Europe/Paris");
        check(
            r,
            "2026-03-31T22:00:00Z",
            "2026-04-01",
            "2026-03-31T22:00:00Z",
            "2026-04-30T22:00:00Z",
        );
        let before = r.containing(utc("2026-03-31T21:59:59.999Z"));
        assert_eq!(before.id, "2026-03-01");
    }

    #[test]
    fn day_31_means_the_last_day_of_february() {
        let r = rule(31, "UTC");
        // Non-leap 2026: February 28.
        check(
            r,
            "2026-03-01T00:00:00Z",
            "2026-02-28",
            "2026-02-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        // Leap 2028: February 29.
        check(
            r,
            "2028-02-29T00:00:00Z",
            "2028-02-29",
            "2028-02-29T00:00:00Z",
            "2028-03-31T00:00:00Z",
        );
        check(
            r,
            "2028-02-28T23:59:59Z",
            "2028-01-31",
            "2028-01-31T00:00:00Z",
            "2028-02-29T00:00:00Z",
        );
    }

    #[test]
    fn days_30_and_31_across_short_and_long_months() {
        let r30 = rule(30, "UTC");
        check(
            r30,
            "2026-05-15T00:00:00Z",
            "2026-04-30",
            "2026-04-30T00:00:00Z",
            "2026-05-30T00:00:00Z",
        );
        let r31 = rule(31, "UTC");
        check(
            r31,
            "2026-05-01T00:00:00Z",
            "2026-04-30",
            "2026-04-30T00:00:00Z",
            "2026-05-31T00:00:00Z",
        );
        check(
            r31,
            "2026-12-31T00:00:00Z",
            "2026-12-31",
            "2026-12-31T00:00:00Z",
            "2027-01-31T00:00:00Z",
        );
    }

    #[test]
    fn a_skipped_midnight_starts_at_the_jump() {
        // Santiago springs forward at 2026-09-06 00:00 local (UTC-4) to 01:00 (UTC-3).
        let r = rule(6, "America/Santiago");
        let c = r.containing(utc("2026-09-20T00:00:00Z"));
        assert_eq!(c.id, "2026-09-06");
        assert_eq!(c.start, utc("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn a_repeated_midnight_starts_at_the_earlier_one() {
        // Havana falls back at 2026-11-01 01:00 (UTC-4) to 00:00 (UTC-5): midnight twice.
        let r = rule(1, "America/Havana");
        let c = r.containing(utc("2026-11-10T00:00:00Z"));
        assert_eq!(c.id, "2026-11-01");
        assert_eq!(c.start, utc("2026-11-01T04:00:00Z"));
    }

    #[test]
    fn cycles_are_found_by_their_id() {
        let r = rule(31, "Europe/Paris");
        let c = r.by_id("2026-02-28").unwrap();
        assert_eq!(c.start, utc("2026-02-27T23:00:00Z"));
        assert_eq!(c.end, utc("2026-03-30T22:00:00Z"));
        assert_eq!(r.by_id("2026-02-27"), None);
        assert_eq!(r.by_id("not a date"), None);
    }

    #[test]
    fn every_day_and_month_gives_contiguous_cycles() {
        for zone in [
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Australia/Sydney",
        ] {
            for day in 1..=31 {
                let r = rule(day, zone);
                let mut c = r.containing(utc("2027-12-15T00:00:00Z"));
                for _ in 0..14 {
                    let next = r.containing(c.end);
                    assert_eq!(next.start, c.end, "{zone} day {day} after {}", c.id);
                    assert!(next.end > next.start);
                    assert!(r.by_id(&next.id).is_some_and(|b| b == next));
                    c = next;
                }
            }
        }
    }
}
