//! Time, passed in. Everything that expires or locks (tokens, lockouts, email tokens,
//! sessions) asks a [`Clock`] rather than the system, so tests move time forward instead of
//! waiting for it. Also the RFC 3339 formatting the API uses for times.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system clock plus an offset that only tests change.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset as u64)
        } else {
            now - Duration::from_millis(offset.unsigned_abs())
        }
    }

    /// Seconds since the Unix epoch, as JWT claims count them.
    pub fn unix_now(&self) -> u64 {
        unix_seconds(self.now())
    }

    /// Milliseconds since the Unix epoch, as rate-limit windows count them.
    pub fn unix_millis(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
    }

    /// Moves this clock forward (tests only; production never calls it).
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `2026-11-29T16:05:34Z` (UTC, whole seconds): the API's time format.
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = unix_seconds(time);
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_000_734, "2026-11-30T01:05:34Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                rfc3339(UNIX_EPOCH + Duration::from_secs(seconds)),
                expected,
                "{seconds}"
            );
        }
    }

    #[test]
    fn an_advanced_clock_is_ahead() {
        let clock = Clock::system();
        let before = clock.unix_now();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.unix_now() >= before + 3600);
    }
}
