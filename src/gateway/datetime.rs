//! Date-times as the reference gateway handles them: `client_datetime` read the way pydantic's lax
//! mode reads a `datetime` from JSON, written back with Python's `datetime.isoformat()`, and the
//! envelope's receive-time `timestamp` as pydantic serialises an aware UTC datetime.

use crate::clock::{self, Fraction, days_from_civil, days_in_month};
use crate::storage::context_id::PyJson;

/// Above this many seconds a number is read as milliseconds (pydantic's `speedate` rule).
const MS_THRESHOLD: f64 = 2e10;

/// Why a value is not a date-time (pydantic's wording).
pub const NOT_A_DATETIME: &str = "Input should be a valid datetime";

/// A date-time: microseconds since 1970-01-01T00:00:00 of its own clock, and its UTC offset in
/// seconds (`None`: naive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    local_micros: i64,
    offset_secs: Option<i32>,
}

/// Reads `v` as pydantic reads a JSON `datetime` (an ISO 8601 string, a date alone, or a number of
/// seconds, or of milliseconds above 2e10, since the epoch in UTC) and returns Python's
/// `isoformat()` of it: `YYYY-MM-DDTHH:MM:SS[.ffffff][±HH:MM]`, `Z` written as `+00:00`.
pub fn isoformat(v: &PyJson) -> Result<String, &'static str> {
    let dt = match v {
        PyJson::Str(s) => parse_text(s.trim()).ok_or(NOT_A_DATETIME)?,
        PyJson::Int(text) => from_number(text.parse::<f64>().map_err(|_| NOT_A_DATETIME)?)?,
        PyJson::Float(f) => from_number(*f)?,
        _ => return Err(NOT_A_DATETIME),
    };
    let mut out = format_local(dt.local_micros);
    if let Some(offset) = dt.offset_secs {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, abs / 60 % 60));
        if abs % 60 != 0 {
            out.push_str(&format!(":{:02}", abs % 60));
        }
    }
    Ok(out)
}

/// The envelope `timestamp` of a record received `micros` after the epoch: pydantic's form of an
/// aware UTC datetime, `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (a fraction only when non-zero).
pub fn receive_timestamp(micros: i64) -> String {
    let mut out = format_local(micros);
    out.push('Z');
    out
}

fn from_number(secs: f64) -> Result<DateTime, &'static str> {
    if !secs.is_finite() {
        return Err(NOT_A_DATETIME);
    }
    let micros = if secs.abs() > MS_THRESHOLD { secs * 1e3 } else { secs * 1e6 };
    // Years 1..=9999, as Python's datetime allows.
    if !(-62_135_596_800e6..=253_402_300_799e6).contains(&micros) {
        return Err(NOT_A_DATETIME);
    }
    #[allow(clippy::cast_possible_truncation)]
    Ok(DateTime { local_micros: micros.round() as i64, offset_secs: Some(0) })
}

/// `YYYY-MM-DD[(T|t| |_)HH:MM[:SS[.f…]][Z|z|±HH[:]MM|±HH]]`, or a number written as a string.
fn parse_text(s: &str) -> Option<DateTime> {
    if let Ok(n) = s.parse::<f64>() {
        return from_number(n).ok();
    }
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=9999).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut micros = days_from_civil(y, mo, d) * 86_400_000_000;
    if b.len() == 10 {
        return Some(DateTime { local_micros: micros, offset_secs: None });
    }
    if !matches!(b[10], b'T' | b't' | b' ' | b'_') {
        return None;
    }
    let t = &b[11..];
    if t.len() < 5 || t[2] != b':' {
        return None;
    }
    let (h, m) = (digits(&t[0..2])?, digits(&t[3..5])?);
    let mut i = 5;
    let mut sec = 0;
    let mut frac = 0;
    if t.get(i) == Some(&b':') {
        sec = digits(t.get(i + 1..i + 3)?)?;
        i += 3;
        if matches!(t.get(i), Some(b'.' | b',')) {
            i += 1;
            let start = i;
            while t.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
            // Six digits are kept; further digits are cut, as pydantic does.
            let kept = &t[start..i.min(start + 6)];
            frac = digits(kept)? * 10_i64.pow(u32::try_from(6 - kept.len()).ok()?);
        }
    }
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    micros += ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
    let zone = &t[i..];
    let offset_secs = match zone {
        [] => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (oh, om) = match rest {
                [a, b] => (digits(&[*a, *b])?, 0),
                [a, b, b':', c, d] | [a, b, c, d] => (digits(&[*a, *b])?, digits(&[*c, *d])?),
                _ => return None,
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i32::try_from(oh * 3600 + om * 60).ok()?;
            Some(if *sign == b'-' { -off } else { off })
        }
        _ => return None,
    };
    Some(DateTime { local_micros: micros, offset_secs })
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0_i64, |acc, c| acc.checked_mul(10)?.checked_add(i64::from(c - b'0')))
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]` of `micros` since the epoch.
fn format_local(micros: i64) -> String {
    clock::iso_datetime(micros, Fraction::WhenNotZero)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(v: PyJson) -> Result<String, &'static str> {
        isoformat(&v)
    }

    fn s(text: &str) -> PyJson {
        PyJson::Str(text.to_owned())
    }

    // Every expectation below is what pydantic 2 + Python's isoformat() print for the same input
    // (checked against matyan-api-models 0.2.1's CreateRunWsRequest).
    #[test]
    fn client_datetimes_are_rewritten_as_python_isoformat() {
        assert_eq!(iso(s("2025-01-01T00:00:00Z")).unwrap(), "2025-01-01T00:00:00+00:00");
        assert_eq!(iso(s("2025-01-01T00:00:00+00:00")).unwrap(), "2025-01-01T00:00:00+00:00");
        assert_eq!(iso(s("2025-01-01T01:00:00+02:00")).unwrap(), "2025-01-01T01:00:00+02:00");
        assert_eq!(iso(s("2025-01-01T00:00:00.1234567")).unwrap(), "2025-01-01T00:00:00.123456");
        assert_eq!(iso(s("2025-01-01T00:00:00.5-0330")).unwrap(), "2025-01-01T00:00:00.500000-03:30");
        assert_eq!(iso(s("2025-01-01")).unwrap(), "2025-01-01T00:00:00");
        assert_eq!(iso(s("2025-01-01 10:20")).unwrap(), "2025-01-01T10:20:00");
        assert_eq!(iso(PyJson::Int("1700000000".into())).unwrap(), "2023-11-14T22:13:20+00:00");
        assert_eq!(iso(PyJson::Float(1_700_000_000_500.0)).unwrap(), "2023-11-14T22:13:20.500000+00:00");
        assert_eq!(iso(s("1700000000")).unwrap(), "2023-11-14T22:13:20+00:00");
    }

    #[test]
    fn what_is_not_a_datetime_is_refused() {
        for bad in
            ["", "2025-13-01", "2025-02-30", "2025-01-01T24:00", "2025-01-01X10:00", "yesterday", "2025-01-01T10"]
        {
            assert_eq!(iso(s(bad)), Err(NOT_A_DATETIME), "{bad}");
        }
        assert_eq!(iso(PyJson::Null), Err(NOT_A_DATETIME));
        assert_eq!(iso(PyJson::Bool(true)), Err(NOT_A_DATETIME));
        assert_eq!(iso(PyJson::Float(f64::NAN)), Err(NOT_A_DATETIME));
        assert_eq!(iso(PyJson::Float(1e300)), Err(NOT_A_DATETIME));
    }

    #[test]
    fn receive_timestamps_carry_a_fraction_only_when_it_is_not_zero() {
        assert_eq!(receive_timestamp(1_735_689_600_000_000), "2025-01-01T00:00:00Z");
        assert_eq!(receive_timestamp(1_735_689_600_000_500), "2025-01-01T00:00:00.000500Z");
    }
}
