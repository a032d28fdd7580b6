//! FastAPI-style query-string parsing (spec `api.md` §1.5): form decoding (`+` is a space),
//! repeated keys forming lists, tolerant booleans, decimal integers, unknown keys ignored.

use axum::http::HeaderMap;

use super::ApiError;

/// The decoded `key=value` pairs of a query string, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes a raw query string as `application/x-www-form-urlencoded`.
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| match part.split_once('=') {
                Some((k, v)) => (form_decode(k), form_decode(v)),
                None => (form_decode(part), String::new()),
            })
            .collect();
        Self { pairs }
    }

    /// Returns the last value given for `key` (FastAPI keeps the last one for scalars).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Returns every value given for `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// Parses `key` as a boolean (`1,true,t,yes,y,on` / `0,false,f,no,n,off`, any case).
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| {
                ApiError::Validation("Input should be a valid boolean, unable to interpret input".into())
            }),
        }
    }

    /// Parses `key` as a decimal integer.
    pub fn int(&self, key: &str, default: i64) -> Result<i64, ApiError> {
        match self.str(key) {
            None => Ok(default),
            Some(v) => parse_int(v).ok_or_else(|| {
                ApiError::Validation("Input should be a valid integer, unable to parse string as an integer".into())
            }),
        }
    }
}

/// Parses a FastAPI boolean.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a decimal integer as Pydantic does (surrounding whitespace and `_` separators between
/// digits are accepted; anything else is not).
pub fn parse_int(v: &str) -> Option<i64> {
    let t = v.trim();
    if t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// The `X-Timezone-Offset` header in minutes, 0 when absent; a non-integer is a 422.
pub fn tz_offset(headers: &HeaderMap) -> Result<i64, ApiError> {
    match headers.get("x-timezone-offset") {
        None => Ok(0),
        Some(v) => v.to_str().ok().and_then(parse_int).ok_or_else(|| {
            ApiError::Validation("Input should be a valid integer, unable to parse string as an integer".into())
        }),
    }
}

/// Decodes one form component: `+` is a space, `%XX` a byte; invalid escapes stay literal and
/// invalid UTF-8 is replaced, as Python's `unquote_plus` does.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_turns_plus_into_space_and_keeps_bad_escapes() {
        let p = Params::parse(Some("q=run.hparams.lr+%3E+1&x=%zz&y=%4&z"));
        assert_eq!(p.str("q"), Some("run.hparams.lr > 1"));
        assert_eq!(p.str("x"), Some("%zz"));
        assert_eq!(p.str("y"), Some("%4"));
        assert_eq!(p.str("z"), Some(""));
        assert_eq!(p.str("missing"), None);
    }

    #[test]
    fn repeated_keys_form_lists_and_scalars_take_the_last() {
        let p = Params::parse(Some("sequence=metric&sequence=images&limit=1&limit=2"));
        assert_eq!(p.all("sequence"), vec!["metric", "images"]);
        assert_eq!(p.int("limit", 0).ok(), Some(2));
    }

    #[test]
    fn booleans_are_tolerant_and_garbage_is_a_422() {
        for (v, want) in [("False", false), ("TRUE", true), ("1", true), ("off", false), ("Y", true)] {
            assert_eq!(Params::parse(Some(&format!("b={v}"))).bool("b", !want).ok(), Some(want), "{v}");
        }
        let err = Params::parse(Some("b=maybe")).bool("b", true).unwrap_err();
        assert_eq!(err.status().as_u16(), 422);
        assert_eq!(Params::parse(None).bool("b", true).ok(), Some(true));
    }

    #[test]
    fn integers_are_decimal_only() {
        assert_eq!(parse_int("45"), Some(45));
        assert_eq!(parse_int(" -3 "), Some(-3));
        assert_eq!(parse_int("1_000"), Some(1000));
        assert_eq!(parse_int("0x10"), None);
        assert_eq!(parse_int("1.5"), None);
        assert_eq!(Params::parse(Some("limit=abc")).int("limit", 0).unwrap_err().status().as_u16(), 422);
    }
}
