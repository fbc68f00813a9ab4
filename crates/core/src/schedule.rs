//! Warm schedules: how many warm instances a pool keeps at a given time.
//!
//! Owns: [`WarmWindow`] (one resolved `[[pool.warm_schedule]]` entry), its
//! matching against a time ([`WarmWindow::contains`]), the choice of the
//! effective target ([`warm_target`]: the first window that contains the
//! time, else the pool's `warm`), and the parsers of the entry's value
//! syntaxes ([`parse_day`], [`parse_hours`], [`parse_utc_offset`]) that
//! config validation calls.
//!
//! Never: reads a clock or a time-zone database. Times are Unix epoch
//! milliseconds ([`Millis`]) passed in; a window's time zone is a fixed
//! offset from UTC, so daylight saving time is not applied (an operator
//! in a zone that has it widens the window or edits the offset twice a
//! year).
//!
//! Semantics: `days` names the days a window *starts* on; `hours` is
//! `start-end` in the window's local time, `end` exclusive. When `end` is
//! not after `start` the window wraps past midnight and ends on the next
//! day: `days = ["fri"]`, `hours = "22:00-06:00"` is Friday 22:00 to
//! Saturday 06:00. Without `hours` a window covers its days whole.

use crate::model::Millis;

/// Minutes in a day: the `end` of a window that runs to midnight.
pub const DAY_MINUTES: u16 = 24 * 60;
/// Every day of the week, as a [`WarmWindow::days`] mask.
pub const EVERY_DAY: u8 = 0x7f;
/// Day names in mask order: bit 0 is Monday, bit 6 Sunday.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;
/// The largest offset accepted, in minutes (UTC+14:00 is the farthest
/// real one).
const MAX_OFFSET_MINUTES: i16 = 14 * 60;

/// One `[[pool.warm_schedule]]` entry, resolved and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WarmWindow {
    /// The days the window starts on: bit 0 Monday ... bit 6 Sunday
    /// ([`EVERY_DAY`] when `days` is absent). Never 0.
    pub days: u8,
    /// Minutes after local midnight the window starts, `0..1440`.
    pub start: u16,
    /// Minutes after local midnight the window ends (exclusive),
    /// `0..=1440`; not after `start`: it ends on the next day. Never equal
    /// to `start` (a whole day is `0..1440`).
    pub end: u16,
    /// The window's time zone: minutes east of UTC (`+02:00` is 120).
    pub utc_offset: i16,
    /// The pool's warm target while the window is open.
    pub warm: u32,
}

impl WarmWindow {
    /// A window open all day on every day, in UTC.
    pub fn always(warm: u32) -> WarmWindow {
        WarmWindow {
            days: EVERY_DAY,
            start: 0,
            end: DAY_MINUTES,
            utc_offset: 0,
            warm,
        }
    }

    /// Whether the window is open at `now` (Unix epoch milliseconds).
    pub fn contains(&self, now: Millis) -> bool {
        let local = i64::try_from(now).unwrap_or(i64::MAX - DAY_MS)
            + i64::from(self.utc_offset) * MINUTE_MS;
        let day = local.div_euclid(DAY_MS);
        let minute = (local.rem_euclid(DAY_MS) / MINUTE_MS) as u16;
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = (day + 3).rem_euclid(7) as u32;
        let starts_on = |d: u32| self.days & (1 << d) != 0;
        if self.start < self.end {
            starts_on(weekday) && self.start <= minute && minute < self.end
        } else {
            (starts_on(weekday) && minute >= self.start)
                || (starts_on((weekday + 6) % 7) && minute < self.end)
        }
    }
}

/// The warm target at `now`: the `warm` of the first window of `schedule`
/// that contains `now`, else `default` (the pool's `warm`).
pub fn warm_target(schedule: &[WarmWindow], default: u32, now: Millis) -> u32 {
    schedule
        .iter()
        .find(|w| w.contains(now))
        .map_or(default, |w| w.warm)
}

/// One item of `days`: a day name (`"mon"` ... `"sun"`, or the whole
/// English name, any case) or a range of them (`"mon-fri"`; `"fri-mon"`
/// wraps over the weekend). Returns its mask.
pub fn parse_day(item: &str) -> Result<u8, String> {
    let one = |name: &str| -> Option<u32> {
        let name = name.trim().to_ascii_lowercase();
        const FULL: [&str; 7] = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ];
        DAY_NAMES
            .iter()
            .position(|d| *d == name)
            .or_else(|| FULL.iter().position(|d| *d == name))
            .map(|i| i as u32)
    };
    let bad = || {
        format!(
            "{item:?} is not a day: use {} or a range like \"mon-fri\"",
            DAY_NAMES.join(", ")
        )
    };
    match item.split_once('-') {
        None => one(item).map(|d| 1 << d).ok_or_else(bad),
        Some((from, to)) => {
            let (Some(from), Some(to)) = (one(from), one(to)) else {
                return Err(bad());
            };
            let mut mask = 0u8;
            let mut d = from;
            loop {
                mask |= 1 << d;
                if d == to {
                    break;
                }
                d = (d + 1) % 7;
            }
            Ok(mask)
        }
    }
}

/// `"08:00-18:00"`: start and end as minutes after midnight. Hours are
/// `0`-`23` (one or two digits), minutes two digits; the end may be
/// `24:00`. Returns `(start, end)`; `end` not after `start` wraps past
/// midnight; equal is an error (leave `hours` out for a whole day).
pub fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    const WHAT: &str = "is not a time range like \"08:00-18:00\" (start-end, 24-hour clock, end exclusive; \"22:00-06:00\" wraps past midnight)";
    let Some((a, b)) = s.split_once('-') else {
        return Err(format!("{s:?} {WHAT}"));
    };
    let time = |t: &str, end: bool| -> Result<u16, String> {
        let t = t.trim();
        let Some((h, m)) = t.split_once(':') else {
            return Err(format!("{s:?} {WHAT}"));
        };
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
            return Err(format!("{s:?} {WHAT}"));
        }
        let (h, m): (u16, u16) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
        if end && h == 24 && m == 0 {
            return Ok(DAY_MINUTES);
        }
        if h > 23 || m > 59 {
            return Err(format!(
                "{t:?} is not a time of day (00:00 to 23:59{})",
                if end { ", or 24:00 as an end" } else { "" }
            ));
        }
        Ok(h * 60 + m)
    };
    let (start, end) = (time(a, false)?, time(b, true)?);
    if start == end {
        return Err(format!(
            "{s:?} starts and ends at the same time; leave hours out for the whole day"
        ));
    }
    Ok((start, end))
}

/// `timezone`: `"UTC"` or a fixed offset `"+HH:MM"` / `"-HH:MM"` (up to
/// 14 hours). Returns minutes east of UTC. Zone names (`Europe/Berlin`)
/// are refused: no time-zone database is consulted, so daylight saving
/// time would silently be wrong.
pub fn parse_utc_offset(s: &str) -> Result<i16, String> {
    if s == "UTC" {
        return Ok(0);
    }
    let what = || {
        let hint = if s.contains('/') {
            " (time zone names are not supported: daylight saving time is not applied)"
        } else {
            ""
        };
        format!("{s:?} is not \"UTC\" or a fixed offset like \"+02:00\" or \"-05:30\"{hint}")
    };
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(what()),
    };
    let Some((h, m)) = rest.split_once(':') else {
        return Err(what());
    };
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(what());
    }
    let (h, m): (i16, i16) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
    if m > 59 || h * 60 + m > MAX_OFFSET_MINUTES {
        return Err(format!("{s:?} is not an offset between -14:00 and +14:00"));
    }
    Ok(sign * (h * 60 + m))
}

/// A mask as day names, for messages: `"mon, tue"`.
pub fn day_names(mask: u8) -> String {
    DAY_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, d)| *d)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01 was a Monday; 00:00 UTC.
    const MON: Millis = 1_704_067_200_000;
    const H: Millis = 3_600_000;
    const M: Millis = 60_000;
    const D: Millis = 24 * H;

    fn window(days: &[&str], hours: &str, offset: &str) -> WarmWindow {
        let mut mask = 0;
        for d in days {
            mask |= parse_day(d).unwrap();
        }
        let (start, end) = parse_hours(hours).unwrap();
        WarmWindow {
            days: if days.is_empty() { EVERY_DAY } else { mask },
            start,
            end,
            utc_offset: parse_utc_offset(offset).unwrap(),
            warm: 4,
        }
    }

    #[test]
    fn the_epoch_was_a_thursday_and_2024_01_01_a_monday() {
        let thu = window(&["thu"], "00:00-24:00", "UTC");
        assert!(thu.contains(0));
        assert!(!thu.contains(D));
        let mon = window(&["mon"], "00:00-24:00", "UTC");
        assert!(mon.contains(MON));
        assert!(mon.contains(MON + D - 1));
        assert!(!mon.contains(MON - 1), "Sunday 23:59:59.999");
        assert!(!mon.contains(MON + D));
        assert!(mon.contains(MON + 7 * D));
    }

    #[test]
    fn working_hours_start_inclusive_end_exclusive() {
        let w = window(&["mon-fri"], "08:00-18:00", "UTC");
        assert!(!w.contains(MON + 8 * H - 1));
        assert!(w.contains(MON + 8 * H));
        assert!(w.contains(MON + 18 * H - 1));
        assert!(!w.contains(MON + 18 * H));
        for day in 0..5 {
            assert!(w.contains(MON + day * D + 12 * H), "weekday {day}");
        }
        for day in 5..7 {
            assert!(!w.contains(MON + day * D + 12 * H), "weekend day {day}");
        }
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        // Friday 22:00 to Saturday 06:00 only.
        let w = window(&["fri"], "22:00-06:00", "UTC");
        let fri = MON + 4 * D;
        assert!(!w.contains(fri + 21 * H + 59 * M));
        assert!(w.contains(fri + 22 * H));
        assert!(w.contains(fri + D - 1), "Friday 23:59");
        assert!(w.contains(fri + D), "Saturday 00:00");
        assert!(w.contains(fri + D + 6 * H - 1), "Saturday 05:59");
        assert!(!w.contains(fri + D + 6 * H), "Saturday 06:00");
        assert!(
            !w.contains(fri + D + 22 * H),
            "Saturday night: not a start day"
        );
        assert!(
            !w.contains(fri + 2 * H),
            "Friday early: Thursday did not start it"
        );
        // Sunday night into Monday wraps the week.
        let w = window(&["sun"], "23:00-01:00", "UTC");
        assert!(w.contains(MON + 7 * D - H));
        assert!(w.contains(MON + 7 * D + 30 * M), "Monday 00:30");
        assert!(w.contains(MON + 30 * M), "Monday 00:30, the week before");
        assert!(!w.contains(MON + D + 30 * M), "Tuesday 00:30");
    }

    #[test]
    fn every_night_wraps_every_day() {
        let w = window(&[], "22:00-06:00", "UTC");
        for day in 0..7 {
            let t = MON + day * D;
            assert!(w.contains(t + 23 * H) && w.contains(t + 5 * H));
            assert!(!w.contains(t + 12 * H) && !w.contains(t + 6 * H));
        }
        assert!(w.contains(0), "the epoch itself, a Thursday midnight");
    }

    #[test]
    fn offsets_shift_the_local_clock() {
        // 08:00-18:00 at +02:00 is 06:00-16:00 UTC.
        let w = window(&["mon"], "08:00-18:00", "+02:00");
        assert!(!w.contains(MON + 6 * H - 1));
        assert!(w.contains(MON + 6 * H));
        assert!(w.contains(MON + 16 * H - 1));
        assert!(!w.contains(MON + 16 * H));
        // 00:00-02:00 Monday at +02:00 is Sunday 22:00-24:00 UTC.
        let w = window(&["mon"], "00:00-02:00", "+02:00");
        assert!(w.contains(MON - 2 * H));
        assert!(!w.contains(MON));
        // 20:00-24:00 Sunday at -05:30 is Monday 01:30-05:30 UTC.
        let w = window(&["sun"], "20:00-24:00", "-05:30");
        assert!(!w.contains(MON + H + 29 * M));
        assert!(w.contains(MON + H + 30 * M));
        assert!(w.contains(MON + 5 * H + 29 * M));
        assert!(!w.contains(MON + 5 * H + 30 * M));
        // Before the epoch in local time (the simulator starts at 0).
        let w = window(&["wed"], "19:00-20:00", "-05:00");
        assert!(w.contains(0), "1969-12-31 19:00 at -05:00, a Wednesday");
        assert!(!w.contains(H));
    }

    #[test]
    fn the_first_open_window_sets_the_target() {
        let night = WarmWindow {
            warm: 0,
            ..window(&["mon-fri"], "22:00-06:00", "UTC")
        };
        let day = window(&["mon-fri"], "08:00-18:00", "UTC");
        let weekend = WarmWindow {
            warm: 1,
            ..window(&["sat", "sun"], "00:00-24:00", "UTC")
        };
        let s = [night, day, weekend];
        assert_eq!(warm_target(&s, 2, MON + 3 * H), 2, "Monday 03:00: none");
        assert_eq!(warm_target(&s, 2, MON + 9 * H), 4);
        assert_eq!(warm_target(&s, 2, MON + 19 * H), 2);
        assert_eq!(warm_target(&s, 2, MON + 23 * H), 0);
        assert_eq!(
            warm_target(&s, 2, MON + 5 * D + 3 * H),
            0,
            "Saturday 03:00: Friday's night"
        );
        assert_eq!(warm_target(&s, 2, MON + 5 * D + 9 * H), 1);
        assert_eq!(warm_target(&[], 2, MON), 2);
        let both = [WarmWindow::always(3), day];
        assert_eq!(warm_target(&both, 0, MON + 9 * H), 3, "first match wins");
    }

    #[test]
    fn day_syntax() {
        assert_eq!(parse_day("mon"), Ok(1));
        assert_eq!(parse_day("Sunday"), Ok(1 << 6));
        assert_eq!(parse_day("mon-fri"), Ok(0b001_1111));
        assert_eq!(parse_day("fri-mon"), Ok(0b111_0001));
        assert_eq!(parse_day("sat-sat"), Ok(1 << 5));
        assert_eq!(day_names(0b111_0001), "mon, fri, sat, sun");
        for bad in ["", "mo", "mon-", "-fri", "mon-fri-sat", "funday", "1"] {
            let e = parse_day(bad).unwrap_err();
            assert!(e.contains("is not a day"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn hours_syntax() {
        assert_eq!(parse_hours("08:00-18:00"), Ok((480, 1080)));
        assert_eq!(parse_hours("8:30 - 17:45"), Ok((510, 1065)));
        assert_eq!(parse_hours("22:00-06:00"), Ok((1320, 360)));
        assert_eq!(parse_hours("00:00-24:00"), Ok((0, 1440)));
        assert_eq!(parse_hours("18:00-00:00"), Ok((1080, 0)));
        for bad in [
            "",
            "08:00",
            "8-18",
            "08:00-18",
            "08:0-18:00",
            "x:00-18:00",
            "08:00-18:00-19:00",
        ] {
            let e = parse_hours(bad).unwrap_err();
            assert!(e.contains("is not a time range"), "{bad:?}: {e}");
        }
        assert!(
            parse_hours("24:00-06:00")
                .unwrap_err()
                .contains("not a time of day")
        );
        assert!(
            parse_hours("08:60-18:00")
                .unwrap_err()
                .contains("not a time of day")
        );
        assert!(
            parse_hours("08:00-25:00")
                .unwrap_err()
                .contains("or 24:00 as an end")
        );
        assert!(
            parse_hours("08:00-08:00")
                .unwrap_err()
                .contains("leave hours out")
        );
    }

    #[test]
    fn offset_syntax() {
        assert_eq!(parse_utc_offset("UTC"), Ok(0));
        assert_eq!(parse_utc_offset("+00:00"), Ok(0));
        assert_eq!(parse_utc_offset("+02:00"), Ok(120));
        assert_eq!(parse_utc_offset("-05:30"), Ok(-330));
        assert_eq!(parse_utc_offset("+14:00"), Ok(840));
        for bad in ["utc", "+2", "+0200", "02:00", "+02:0", "GMT"] {
            assert!(
                parse_utc_offset(bad).unwrap_err().contains("fixed offset"),
                "{bad:?}"
            );
        }
        assert!(
            parse_utc_offset("Europe/Berlin")
                .unwrap_err()
                .contains("time zone names are not supported")
        );
        assert!(parse_utc_offset("+14:30").unwrap_err().contains("between"));
        assert!(parse_utc_offset("+02:75").unwrap_err().contains("between"));
    }
}
