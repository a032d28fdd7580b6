//! The wall clock and the proleptic Gregorian calendar, in one place: every "now" of the process
//! and every conversion between POSIX time and a calendar date (Howard Hinnant's algorithms).
//!
//! The ingest actors (batcher deadlines, idle stops, restart backoffs, transaction timestamps) read
//! time only through a [`Clock`] they are given, so a test or a simulation runs them under tokio's
//! paused time (`tokio::time::pause`, `advance`) and gets the same decisions every run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// POSIX seconds now, from the wall clock (0 before 1970).
pub fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// POSIX microseconds now, from the wall clock (0 before 1970).
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The clock the ingest actors read.
///
/// Monotonic time is tokio's in both variants: the real monotonic clock in production, the paused
/// clock of a test runtime under `tokio::time::pause`, so what an actor reads and when its timers
/// (`run_later`, `run_interval`, `sleep`) fire always agree. The variants differ in wall time.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The process's clocks: tokio's monotonic clock and the system's wall clock.
    #[default]
    System,
    /// Wall time that starts at `epoch_micros` when the clock is made and moves with tokio's
    /// monotonic clock: under paused time every timestamp an actor writes is deterministic.
    Simulated {
        /// POSIX microseconds at `start`.
        epoch_micros: i64,
        /// The monotonic instant the wall time counts from.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A [`Clock::Simulated`] reading `epoch_micros` now.
    pub fn simulated(epoch_micros: i64) -> Self {
        Clock::Simulated { epoch_micros, start: tokio::time::Instant::now() }
    }

    /// The monotonic now (tokio's, so paused time applies).
    pub fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    /// The time elapsed since `earlier`, by this clock (zero if `earlier` is later).
    pub fn since(&self, earlier: std::time::Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    /// POSIX seconds now.
    pub fn unix_secs(&self) -> f64 {
        match self {
            Clock::System => now_secs(),
            Clock::Simulated { .. } => self.unix_micros() as f64 / 1e6,
        }
    }

    /// POSIX microseconds now.
    pub fn unix_micros(&self) -> i64 {
        match self {
            Clock::System => now_micros(),
            Clock::Simulated { epoch_micros, start } => {
                let elapsed = tokio::time::Instant::now().saturating_duration_since(*start);
                epoch_micros.saturating_add(i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
            }
        }
    }
}

/// Whether `y` is a leap year.
pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days of month `m` (1–12) of year `y`.
pub fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of the date `y`-`m`-`d` (`days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(y, m, d)` of `days` since 1970-01-01 (`civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS` of `micros` since the epoch, then `.ffffff` when `fraction` is
/// [`Fraction::Always`] or the microseconds are not zero.
pub fn iso_datetime(micros: i64, fraction: Fraction) -> String {
    let (y, m, d) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    let rem = micros.rem_euclid(MICROS_PER_DAY);
    let secs = rem / 1_000_000;
    let us = rem % 1_000_000;
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if fraction == Fraction::Always || us != 0 {
        out.push_str(&format!(".{us:06}"));
    }
    out
}

/// Formats POSIX seconds as RFC 3339 in UTC with microseconds, e.g. `2025-01-01T00:00:00.000000Z`.
pub fn rfc3339_utc(secs: f64) -> String {
    #[allow(clippy::cast_possible_truncation)]
    let micros = (secs * 1e6).round() as i64;
    let mut out = iso_datetime(micros, Fraction::Always);
    out.push('Z');
    out
}

/// When [`iso_datetime`] writes the microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    /// Always six digits (the reference worker's `isoformat(timespec="microseconds")`).
    Always,
    /// Only when not zero (Python's `isoformat()`, pydantic's datetimes).
    WhenNotZero,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_clock_moves_only_with_paused_time() {
        let clock = Clock::simulated(1_735_689_600_000_000);
        let t0 = clock.now();
        assert_eq!(clock.unix_micros(), 1_735_689_600_000_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.since(t0), Duration::from_millis(1_500));
        assert_eq!(clock.unix_secs(), 1_735_689_601.5);
    }

    #[test]
    fn days_and_dates_round_trip_across_eras_and_leap_days() {
        for days in [-719_468, -1, 0, 59, 60, 10_957, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
    }

    #[test]
    fn datetimes_carry_their_fraction_as_asked() {
        assert_eq!(iso_datetime(1_735_689_600_000_000, Fraction::WhenNotZero), "2025-01-01T00:00:00");
        assert_eq!(iso_datetime(1_735_689_600_000_000, Fraction::Always), "2025-01-01T00:00:00.000000");
        assert_eq!(iso_datetime(-1, Fraction::WhenNotZero), "1969-12-31T23:59:59.999999");
    }
}
