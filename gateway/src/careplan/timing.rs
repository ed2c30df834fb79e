//! Measurement windows: when a ServiceRequest's `occurrenceTiming` expects readings, as absolute
//! instants, computed in the plan's time zone with the IANA tz database (`chrono-tz`).
//!
//! Two forms are supported (anything else is refused when the plan is parsed):
//! * [`Timing::TimesOfDay`]: `timeOfDay[]` every day, or on the listed `dayOfWeek`s; each time is
//!   one window `[time − before, time + after)` expecting one reading.
//! * [`Timing::PerPeriod`]: `frequency = N` per local calendar day or per ISO week (Monday 00:00 to
//!   Monday 00:00 local); the whole period is one window expecting N readings.
//!
//! # Daylight-saving rules
//! * A wall time that occurs twice (the October fall-back hour) means its **first** occurrence.
//! * A wall time that does not exist (the March spring-forward hour) is read with the offset in
//!   force **before** the gap (RFC 5545 §3.3.5), so 02:30 on the spring-forward day is 03:30 CEST.
//! * `before`/`after` are elapsed durations around the resolved instant; a local day is whatever
//!   length it has (23 h in March, 25 h in October).

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// The longest `before`/`after` a plan may set; bounds how far around an instant windows are
/// searched.
pub const MAX_TOLERANCE: Duration = Duration::days(2);

/// The length of the period in [`Timing::PerPeriod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodUnit {
    /// A local calendar day.
    Day,
    /// An ISO week (Monday to Sunday, local).
    Week,
}

/// A supported `occurrenceTiming`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// `timeOfDay[]`, daily or on some weekdays.
    TimesOfDay {
        /// Local times of day, sorted.
        times: Vec<NaiveTime>,
        /// The weekdays, or `None` for every day.
        days: Option<Vec<Weekday>>,
    },
    /// `frequency = count` per day or week, anywhere in it.
    PerPeriod {
        /// Readings expected per period.
        count: u32,
        /// Day or week.
        unit: PeriodUnit,
    },
}

/// The `measurement-window` extension: tolerance around a time of day and how long to wait for
/// late data before judging a window missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// How early a reading still counts.
    pub before: Duration,
    /// How late a reading still counts.
    pub after: Duration,
    /// How long after the window's end to wait (for devices that upload later) before judging it.
    pub grace: Duration,
}

impl Default for Tolerance {
    /// Used when a ServiceRequest has no `measurement-window` extension.
    fn default() -> Self {
        Self {
            before: Duration::minutes(60),
            after: Duration::minutes(60),
            grace: Duration::minutes(30),
        }
    }
}

/// One window: readings taken in `[start, end)` count towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First instant that counts.
    pub start: DateTime<Utc>,
    /// First instant that no longer counts.
    pub end: DateTime<Utc>,
    /// Readings expected in it.
    pub expected: u32,
}

impl Window {
    /// Whether `t` falls in the window.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }
}

/// A Timing with its tolerance and bounds: everything needed to list windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The form.
    pub timing: Timing,
    /// Tolerance and grace.
    pub tolerance: Tolerance,
    /// `boundsPeriod.start` (and the plan's period): no window starts (or, for times of day, is
    /// nominally due) before it.
    pub not_before: Option<DateTime<Utc>>,
    /// `boundsPeriod.end`: no window starts (is nominally due) after it.
    pub not_after: Option<DateTime<Utc>>,
}

/// The instant a local wall time means in `tz` (see the module doc for the DST rules).
pub fn resolve_local(tz: Tz, date: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: use the offset in force a day earlier (before the transition).
            let probe = Utc.from_utc_datetime(&(naive - Duration::days(1)));
            let offset = tz.offset_from_utc_datetime(&probe.naive_utc()).fix();
            Utc.from_utc_datetime(&(naive - Duration::seconds(offset.local_minus_utc().into())))
        }
    }
}

/// Local midnight starting `date` (exists in every zone Heim targets; a zone that skips midnight
/// gets the instant after the gap via [`resolve_local`]).
fn midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    resolve_local(tz, date, NaiveTime::MIN)
}

impl Schedule {
    /// Every window that overlaps `[from, to)`, ordered by start.
    pub fn windows(&self, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Window> {
        let mut out = Vec::new();
        if to <= from {
            return out;
        }
        let margin = Duration::days(1) + MAX_TOLERANCE;
        let first = (from - margin).with_timezone(&tz).date_naive();
        let last = (to + margin).with_timezone(&tz).date_naive();
        match &self.timing {
            Timing::TimesOfDay { times, days } => {
                let mut d = first;
                while d <= last {
                    if days.as_ref().is_none_or(|ds| ds.contains(&d.weekday())) {
                        for t in times {
                            let nominal = resolve_local(tz, d, *t);
                            if !self.in_bounds(nominal) {
                                continue;
                            }
                            out.push(Window {
                                start: nominal - self.tolerance.before,
                                end: nominal + self.tolerance.after,
                                expected: 1,
                            });
                        }
                    }
                    match d.succ_opt() {
                        Some(n) => d = n,
                        None => break,
                    }
                }
            }
            Timing::PerPeriod { count, unit } => {
                let (mut d, step) = match unit {
                    PeriodUnit::Day => (first, 1),
                    PeriodUnit::Week => (
                        first - Duration::days(first.weekday().num_days_from_monday().into()),
                        7,
                    ),
                };
                while d <= last {
                    let next = d + Duration::days(step);
                    let start = midnight(tz, d);
                    if self.in_bounds(start) {
                        out.push(Window {
                            start,
                            end: midnight(tz, next),
                            expected: *count,
                        });
                    }
                    d = next;
                }
            }
        }
        out.retain(|w| w.end > from && w.start < to);
        out.sort();
        out.dedup();
        out
    }

    /// The windows that contain `t`.
    pub fn windows_at(&self, tz: Tz, t: DateTime<Utc>) -> Vec<Window> {
        let mut v = self.windows(tz, t, t + Duration::milliseconds(1));
        v.retain(|w| w.contains(t));
        v
    }

    /// The first window that has not ended by `t` (the next one to measure for).
    pub fn next_window(&self, tz: Tz, t: DateTime<Utc>) -> Option<Window> {
        // Look ahead up to two weeks: enough for any weekly form.
        self.windows(tz, t, t + Duration::days(15))
            .into_iter()
            .find(|w| w.end > t)
    }

    fn in_bounds(&self, t: DateTime<Utc>) -> bool {
        self.not_before.is_none_or(|b| t >= b) && self.not_after.is_none_or(|e| t <= e)
    }
}

/// An instant as an RFC 3339 string with the plan zone's offset (`2026-05-04T07:00:00+02:00`),
/// the form FHIR `dateTime`s and DetectedIssue identifiers use.
pub fn local_rfc3339(tz: Tz, t: DateTime<Utc>) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use chrono_tz::Europe::Oslo;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }
    fn daily(times: &[NaiveTime], before: i64, after: i64) -> Schedule {
        Schedule {
            timing: Timing::TimesOfDay {
                times: times.to_vec(),
                days: None,
            },
            tolerance: Tolerance {
                before: Duration::minutes(before),
                after: Duration::minutes(after),
                grace: Duration::minutes(30),
            },
            not_before: None,
            not_after: None,
        }
    }

    #[test]
    fn daily_time_of_day_keeps_local_time_across_march_dst() {
        // Europe/Oslo springs forward on Sunday 2026-03-29 at 02:00 CET → 03:00 CEST.
        let s = daily(&[hm(8, 0)], 60, 120);
        let w = s.windows(
            Oslo,
            utc("2026-03-28T00:00:00+01:00"),
            utc("2026-03-31T00:00:00+02:00"),
        );
        let starts: Vec<String> = w.iter().map(|w| local_rfc3339(Oslo, w.start)).collect();
        let ends: Vec<String> = w.iter().map(|w| local_rfc3339(Oslo, w.end)).collect();
        assert_eq!(
            starts,
            [
                "2026-03-28T07:00:00+01:00",
                "2026-03-29T07:00:00+02:00",
                "2026-03-30T07:00:00+02:00"
            ]
        );
        assert_eq!(
            ends,
            [
                "2026-03-28T10:00:00+01:00",
                "2026-03-29T10:00:00+02:00",
                "2026-03-30T10:00:00+02:00"
            ]
        );
        // In UTC the window moves one hour earlier across the change.
        assert_eq!(w[0].start, utc("2026-03-28T06:00:00Z"));
        assert_eq!(w[1].start, utc("2026-03-29T05:00:00Z"));
    }

    #[test]
    fn time_in_the_spring_gap_uses_the_offset_before_it() {
        let s = daily(&[hm(2, 30)], 0, 60);
        let w = s.windows(
            Oslo,
            utc("2026-03-29T00:00:00+01:00"),
            utc("2026-03-29T23:00:00+02:00"),
        );
        assert_eq!(w.len(), 1);
        // 02:30 does not exist that night; 02:30 CET is 01:30Z, shown as 03:30 CEST.
        assert_eq!(w[0].start, utc("2026-03-29T01:30:00Z"));
        assert_eq!(local_rfc3339(Oslo, w[0].start), "2026-03-29T03:30:00+02:00");
    }

    #[test]
    fn repeated_autumn_hour_means_its_first_occurrence() {
        // Europe/Oslo falls back on Sunday 2026-10-25 at 03:00 CEST → 02:00 CET; 02:30 occurs twice.
        let s = daily(&[hm(2, 30)], 15, 15);
        let w = s.windows(
            Oslo,
            utc("2026-10-25T00:00:00+02:00"),
            utc("2026-10-25T23:00:00+01:00"),
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].start, utc("2026-10-25T00:15:00Z"));
        assert_eq!(w[0].end, utc("2026-10-25T00:45:00Z"));
        // A reading at the second 02:30 (01:30Z) is outside: one window, not two.
        assert!(s.windows_at(Oslo, utc("2026-10-25T01:30:00Z")).is_empty());
    }

    #[test]
    fn per_day_windows_are_23_and_25_hours_on_change_days() {
        let s = Schedule {
            timing: Timing::PerPeriod {
                count: 2,
                unit: PeriodUnit::Day,
            },
            tolerance: Tolerance::default(),
            not_before: None,
            not_after: None,
        };
        let march = s.windows_at(Oslo, utc("2026-03-29T12:00:00+02:00"));
        assert_eq!(march.len(), 1);
        assert_eq!(march[0].start, utc("2026-03-28T23:00:00Z"));
        assert_eq!(march[0].end, utc("2026-03-29T22:00:00Z"));
        assert_eq!(march[0].end - march[0].start, Duration::hours(23));
        assert_eq!(march[0].expected, 2);
        let october = s.windows_at(Oslo, utc("2026-10-25T12:00:00+01:00"));
        assert_eq!(october[0].end - october[0].start, Duration::hours(25));
        assert_eq!(
            local_rfc3339(Oslo, october[0].start),
            "2026-10-25T00:00:00+02:00"
        );
        assert_eq!(
            local_rfc3339(Oslo, october[0].end),
            "2026-10-26T00:00:00+01:00"
        );
    }

    #[test]
    fn per_week_window_is_the_iso_week_in_local_time() {
        let s = Schedule {
            timing: Timing::PerPeriod {
                count: 2,
                unit: PeriodUnit::Week,
            },
            tolerance: Tolerance::default(),
            not_before: None,
            not_after: None,
        };
        // Week 13 of 2026 (Mon 23 – Sun 29 March) contains the spring change: 167 hours.
        let w = s.windows_at(Oslo, utc("2026-03-29T21:59:59Z"));
        assert_eq!(w.len(), 1);
        assert_eq!(local_rfc3339(Oslo, w[0].start), "2026-03-23T00:00:00+01:00");
        assert_eq!(local_rfc3339(Oslo, w[0].end), "2026-03-30T00:00:00+02:00");
        assert_eq!(w[0].end - w[0].start, Duration::hours(7 * 24 - 1));
        // Sunday 23:59:59 CEST is still week 13; Monday 00:00 CEST is week 14.
        let next = s.windows_at(Oslo, utc("2026-03-29T22:00:00Z"));
        assert_eq!(next[0].start, w[0].end);
    }

    #[test]
    fn weekly_times_of_day_on_listed_days_only() {
        let s = Schedule {
            timing: Timing::TimesOfDay {
                times: vec![hm(9, 0)],
                days: Some(vec![Weekday::Mon, Weekday::Thu]),
            },
            tolerance: Tolerance {
                before: Duration::minutes(30),
                after: Duration::minutes(90),
                grace: Duration::minutes(30),
            },
            not_before: None,
            not_after: None,
        };
        // Two weeks around the October change: Mon 19, Thu 22, Mon 26, Thu 29 October 2026.
        let w = s.windows(
            Oslo,
            utc("2026-10-19T00:00:00+02:00"),
            utc("2026-11-01T00:00:00+01:00"),
        );
        let starts: Vec<String> = w.iter().map(|w| local_rfc3339(Oslo, w.start)).collect();
        assert_eq!(
            starts,
            [
                "2026-10-19T08:30:00+02:00",
                "2026-10-22T08:30:00+02:00",
                "2026-10-26T08:30:00+01:00",
                "2026-10-29T08:30:00+01:00"
            ]
        );
        assert!(w.iter().all(|w| w.end - w.start == Duration::hours(2)));
        let next = s
            .next_window(Oslo, utc("2026-10-22T11:00:00+02:00"))
            .unwrap();
        assert_eq!(local_rfc3339(Oslo, next.start), "2026-10-26T08:30:00+01:00");
    }

    #[test]
    fn bounds_limit_windows() {
        let mut s = daily(&[hm(8, 0)], 60, 60);
        s.not_before = Some(utc("2026-05-02T00:00:00+02:00"));
        s.not_after = Some(utc("2026-05-03T23:59:59+02:00"));
        let w = s.windows(
            Oslo,
            utc("2026-05-01T00:00:00+02:00"),
            utc("2026-05-06T00:00:00+02:00"),
        );
        assert_eq!(w.len(), 2);
        assert_eq!(local_rfc3339(Oslo, w[0].start), "2026-05-02T07:00:00+02:00");
    }
}
