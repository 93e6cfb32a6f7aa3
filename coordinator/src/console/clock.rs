//! Unix milliseconds to and from the UTC wall-clock text the console shows and its time-range
//! inputs send (`2026-12-02T03:04` or `2026-12-02T03:04:05`), without a date crate: the civil
//! calendar conversion is a dozen lines (Howard Hinnant's `days_from_civil`).

/// `2026-12-02 03:04:05.678` (UTC).
pub fn format_ms(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{s:02}.{ms:03}")
}

/// `2026-12-02T03:04` as a `datetime-local` input spells it (UTC), with `:05` seconds when
/// there are any (so a range given to the second comes back as given).
pub fn input_value(unix_ms: i64) -> String {
    let t = format_ms(unix_ms);
    if &t[17..19] == "00" {
        format!("{}T{}", &t[..10], &t[11..16])
    } else {
        format!("{}T{}", &t[..10], &t[11..19])
    }
}

/// Parses `YYYY-MM-DDTHH:MM[:SS]` (or with a space for the `T`) as UTC; `None` when it is not
/// a real date and time.
pub fn parse_utc(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || !(1..=12).contains(&m) || day < 1 || day > days_in_month(y, m) {
        return None;
    }
    let mut t = time.split(':');
    let (h, min) = (num(t.next()?)?, num(t.next()?)?);
    let s = t.next().map_or(Some(0), num)?;
    if t.next().is_some() || h > 23 || min > 59 || s > 59 {
        return None;
    }
    Some((days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + s) * 1000)
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A span of milliseconds as people read it: `850 ms`, `3.2 s`, `4 min 10 s`, `2 h 5 min`.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_instant_formats_as_its_utc_wall_clock() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00.000");
        // 2026-12-02T03:04:05.678Z
        assert_eq!(format_ms(1_796_180_645_678), "2026-12-02 03:04:05.678");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn parsing_what_formatting_wrote_gives_the_instant_back() {
        for ms in [0, 951_782_400_000, 1_796_180_640_000, 4_102_444_800_000] {
            assert_eq!(parse_utc(&input_value(ms)), Some(ms - ms % 60_000));
        }
        assert_eq!(parse_utc("2026-12-02T03:04:05"), Some(1_796_180_645_000));
        assert_eq!(input_value(1_796_180_645_678), "2026-12-02T03:04:05");
    }

    #[test]
    fn dates_and_times_that_do_not_exist_are_refused() {
        for bad in [
            "",
            "2026-12-02",
            "2026-13-01T00:00",
            "2026-02-29T00:00",
            "2026-04-31T00:00",
            "2026-12-02T24:00",
            "2026-12-02T03:60",
            "2026-12-02T03:04:05:06",
            "+026-12-02T03:04",
            "twenty-six",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad:?}");
        }
        assert!(parse_utc("2024-02-29T00:00").is_some(), "a leap day");
    }

    #[test]
    fn spans_read_in_the_unit_that_fits() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(3_200), "3.2 s");
        assert_eq!(span(250_000), "4 min 10 s");
        assert_eq!(span(7_500_000), "2 h 5 min");
        assert_eq!(span(-5), "0 ms");
    }
}
