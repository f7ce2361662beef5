//! Date shifting on PostgreSQL's text forms of `date`, `timestamp` and
//! `timestamptz`: only the calendar date moves, by whole days; the time of
//! day, fractional seconds and UTC offset are kept byte for byte.

use time::{Date, Duration, Month};

/// `YYYY-MM-DD…` shifted by `days`; `infinity` and `-infinity` stay. None
/// when the text is not a date or timestamp in ISO form (or is BC, or would
/// leave the years 1 to 9999).
pub fn shift(text: &str, days: i64) -> Option<String> {
    if text == "infinity" || text == "-infinity" {
        return Some(text.to_owned());
    }
    if text.ends_with(" BC") {
        return None;
    }
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if b.len() > 10 && b[10] != b' ' && b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = text.get(r)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let year = num(0..4)? as i32;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let moved = date.checked_add(Duration::days(days))?;
    if !(1..=9999).contains(&moved.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}{}",
        moved.year(),
        u8::from(moved.month()),
        moved.day(),
        &text[10..]
    ))
}

/// The offset in days for a 64-bit draw: uniform over `-max..=-1` and
/// `1..=max` (never zero, so no row keeps its real dates).
pub fn offset_days(draw: u64, max_days: u32) -> i64 {
    let max = i64::from(max_days.max(1));
    let span = 2 * max as u64;
    let d = (draw % span) as i64 - max;
    if d >= 0 {
        d + 1
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_dates_and_timestamps_keeping_the_rest() {
        assert_eq!(shift("2024-02-28", 2).as_deref(), Some("2024-03-01"));
        assert_eq!(shift("2024-01-01", -1).as_deref(), Some("2023-12-31"));
        assert_eq!(
            shift("2024-03-10 23:59:59.123456+05:30", 30).as_deref(),
            Some("2024-04-09 23:59:59.123456+05:30")
        );
        assert_eq!(
            shift("1999-12-31T10:00:00Z", 1).as_deref(),
            Some("2000-01-01T10:00:00Z")
        );
        assert_eq!(shift("infinity", 5).as_deref(), Some("infinity"));
        for bad in [
            "",
            "2024",
            "24-01-01",
            "2024-13-01",
            "2024-02-30",
            "hello world",
            "2024-01-01X",
            "0044-03-15 BC",
            "9999-12-31",
        ] {
            let days = if bad.starts_with("9999") { 1 } else { 0 };
            assert_eq!(shift(bad, days), None, "{bad:?}");
        }
    }

    #[test]
    fn offsets_are_never_zero_and_within_range() {
        let mut seen = std::collections::BTreeSet::new();
        for draw in 0..1000u64 {
            let d = offset_days(draw, 10);
            assert!(d != 0 && (-10..=10).contains(&d), "{d}");
            seen.insert(d);
        }
        assert_eq!(seen.len(), 20);
        assert_eq!(offset_days(u64::MAX, 1).abs(), 1);
    }
}
