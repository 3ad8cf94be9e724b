//! Time as an input: the caller's clocks, and the envelope timestamp format.

/// The moment an input happens, as told by the caller.
///
/// The core never reads a clock. `monotonic_us` drives every decision that
/// involves durations (rate limits, heartbeats, token expiry); `unix_ms` is
/// only used to stamp envelopes and to compare token `exp` claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Now {
    /// Microseconds on a monotonic clock with an arbitrary origin.
    pub monotonic_us: u64,
    /// Milliseconds since the Unix epoch (UTC), for timestamps.
    pub unix_ms: i64,
}

impl Now {
    /// A `Now` whose two clocks start together: handy in tests and simulations.
    pub fn from_start(start_unix_ms: i64, elapsed_us: u64) -> Now {
        Now {
            monotonic_us: elapsed_us,
            unix_ms: start_unix_ms + (elapsed_us / 1000) as i64,
        }
    }
}

/// Length of a timestamp produced by [`format_rfc3339_ms`].
pub const TIMESTAMP_LEN: usize = 24;

/// Formats `unix_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds).
///
/// Years outside 0..=9999 are clamped to that range: a timestamp must always
/// have the fixed shape clients parse, whatever clock the caller passed in.
pub fn format_rfc3339_ms(unix_ms: i64) -> [u8; TIMESTAMP_LEN] {
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = unix_ms.clamp(MIN_MS, MAX_MS);
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, (ms_of_day / 60_000) % 60);
    let (second, milli) = ((ms_of_day / 1000) % 60, ms_of_day % 1000);

    let mut out = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut out[0..4], year);
    put_digits(&mut out[5..7], month);
    put_digits(&mut out[8..10], day);
    put_digits(&mut out[11..13], hour);
    put_digits(&mut out[14..16], minute);
    put_digits(&mut out[17..19], second);
    put_digits(&mut out[20..23], milli);
    out
}

fn put_digits(slot: &mut [u8], mut value: i64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(ms: i64) -> String {
        String::from_utf8(format_rfc3339_ms(ms).to_vec()).unwrap()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(1_760_697_000_000), "2025-10-17T10:30:00.000Z");
        assert_eq!(fmt(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(fmt(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn clamps_out_of_range_years() {
        assert_eq!(fmt(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(fmt(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    /// The Gregorian month lengths, written independently of
    /// `civil_from_days`'s arithmetic.
    fn days_in_month(year: i64, month: i64) -> i64 {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn every_day_follows_the_previous_one_in_the_calendar() {
        // Walk 800 years of days (1770 to 2570, leap centuries and 2000
        // included): each day is the previous one's successor, and a
        // month ends exactly at its length.
        let mut previous = civil_from_days(-200 * 365);
        for days in (-200 * 365 + 1)..(600 * 365) {
            let current = civil_from_days(days);
            let (year, month, day) = previous;
            let expected = if day < days_in_month(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
            assert_eq!(current, expected, "day {days} after {previous:?}");
            previous = current;
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
