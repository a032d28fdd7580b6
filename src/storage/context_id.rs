//! Context ids: `context_to_id` of matyan-api-models 0.2.1, reproduced byte for byte (spec §1.8).
//!
//! The reference hashes `json.dumps(ctx, sort_keys=True, separators=(",", ":"))` with SHA-256 and
//! keeps the first four bytes. Reproducing it means reproducing Python's JSON writer: recursive key
//! sort by code point, `ensure_ascii` escapes, Python float `repr`, exact integers and the bare
//! words `NaN`/`Infinity`. The id is computed from the JSON as received, so the int-versus-float
//! distinction (`1` and `1.0` differ) must survive parsing.
//!
//! Two entry points: [`context_to_id`] takes a `serde_json::Value` (exact for every integer that
//! fits `i64`/`u64`; serde_json turns larger integers into floats and rejects `NaN`), and
//! [`context_to_id_from_json`] parses the raw JSON text itself with Python's `json.loads` rules,
//! so big integers and `NaN`/`Infinity` hash exactly as in Python.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Nesting depth beyond which the raw-text parser refuses (Python would hit its recursion limit).
const MAX_DEPTH: usize = 128;

/// Errors of parsing a raw context JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextIdError {
    /// The text is not JSON as Python's `json.loads` accepts it.
    #[error("invalid context json at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: &'static str },
    /// A `\uXXXX` escape leaves an unpaired surrogate, which a Rust string cannot hold.
    #[error("unpaired surrogate escape at byte {0}")]
    LoneSurrogate(usize),
    /// The value nests deeper than the parser allows.
    #[error("context json nests deeper than {0} levels")]
    TooDeep(usize),
}

/// A JSON value with Python's number model: integers exact (as decimal text), floats as `f64`.
#[derive(Debug, Clone, PartialEq)]
pub enum PyJson {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer of any size, as canonical decimal text (no leading zeros, no `-0`).
    Int(String),
    /// A float, including NaN and the infinities.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<PyJson>),
    /// An object in input order; a repeated key keeps its last value, as a Python dict does.
    Object(Vec<(String, PyJson)>),
}

impl From<&serde_json::Value> for PyJson {
    /// Converts a serde_json value; integers are exact when serde_json kept them as integers.
    fn from(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => PyJson::Null,
            serde_json::Value::Bool(b) => PyJson::Bool(*b),
            serde_json::Value::Number(n) => {
                if n.is_i64() || n.is_u64() {
                    PyJson::Int(n.to_string())
                } else {
                    PyJson::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => PyJson::Str(s.clone()),
            serde_json::Value::Array(items) => PyJson::Array(items.iter().map(PyJson::from).collect()),
            serde_json::Value::Object(map) => {
                PyJson::Object(map.iter().map(|(k, v)| (k.clone(), PyJson::from(v))).collect())
            }
        }
    }
}

impl PyJson {
    /// Tells whether Python would find the value falsy (`not ctx`): None, False, 0, 0.0, "", [], {}.
    pub fn is_falsy(&self) -> bool {
        match self {
            PyJson::Null => true,
            PyJson::Bool(b) => !b,
            PyJson::Int(d) => d == "0",
            PyJson::Float(f) => *f == 0.0,
            PyJson::Str(s) => s.is_empty(),
            PyJson::Array(items) => items.is_empty(),
            PyJson::Object(entries) => entries.is_empty(),
        }
    }
}

/// Computes the context id of a serde_json value: 0 for a falsy context (null, `{}`, and the
/// other Python-falsy values), else the first four bytes of SHA-256 of the canonical JSON.
pub fn context_to_id(ctx: &serde_json::Value) -> u32 {
    id_of(&PyJson::from(ctx))
}

/// Computes the context id of a raw JSON text, parsed with Python's `json.loads` rules (big
/// integers exact, `NaN`, `Infinity` and `-Infinity` accepted).
pub fn context_to_id_from_json(text: &str) -> Result<u32, ContextIdError> {
    Ok(id_of(&parse_python_json(text)?))
}

/// Computes the context id of an already parsed Python-model JSON value.
pub fn id_of(ctx: &PyJson) -> u32 {
    match canonical_json(ctx) {
        None => 0,
        Some(text) => {
            let digest = Sha256::digest(text.as_bytes());
            u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
        }
    }
}

/// Returns the canonical JSON that the reference hashes, or `None` when the context is falsy and
/// its id is 0 without hashing.
pub fn canonical_json(ctx: &PyJson) -> Option<String> {
    if ctx.is_falsy() {
        return None;
    }
    let mut out = String::new();
    write_canonical(ctx, &mut out);
    Some(out)
}

fn write_canonical(v: &PyJson, out: &mut String) {
    match v {
        PyJson::Null => out.push_str("null"),
        PyJson::Bool(true) => out.push_str("true"),
        PyJson::Bool(false) => out.push_str("false"),
        PyJson::Int(digits) => out.push_str(digits),
        PyJson::Float(f) => out.push_str(&python_float_repr(*f)),
        PyJson::Str(s) => write_ascii_string(s, out),
        PyJson::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        PyJson::Object(entries) => {
            // Rust's `str` order is byte order of UTF-8, which equals code point order.
            let mut sorted: Vec<&(String, PyJson)> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (k, val)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ascii_string(k, out);
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
    }
}

/// Writes a string as `json.dumps(ensure_ascii=True)` does: everything outside `' '..='~'` is
/// escaped, with short forms for `\n \r \t \b \f`, lowercase `\uXXXX` otherwise, and surrogate
/// pairs beyond the BMP.
pub fn write_ascii_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Formats a float as Python's `repr` (and so `json.dumps`) does: shortest round-trip digits,
/// fixed notation with at least `.0` for decimal exponents -4 to 15, else `d.ddde±XX`, and
/// `NaN`, `Infinity`, `-Infinity` for the non-finite values.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.2345678901234568e17" or "1e-5".
    // When two strings of that length both round-trip (an exact tie such as x.25 printed with
    // one decimal), Rust rounds the tie up while Python's dtoa picks the correctly rounded,
    // half-even one; formatting with that many digits in exact mode gives Python's choice.
    let shortest = format!("{f:e}");
    let n_digits = shortest.split('e').next().map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let exact = format!("{:.*e}", n_digits.saturating_sub(1), f);
    let sci = if exact.parse::<f64>().is_ok_and(|g| g.to_bits() == f.to_bits()) { exact } else { shortest };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw JSON parsing with Python's json.loads rules

/// Parses JSON text as Python's `json.loads` does: integers exact, other numbers as floats,
/// `NaN`/`Infinity`/`-Infinity` accepted, raw control characters in strings rejected.
pub fn parse_python_json(text: &str) -> Result<PyJson, ContextIdError> {
    let mut p = Parser { s: text.as_bytes(), pos: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(p.err("extra data"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> ContextIdError {
        ContextIdError::Syntax { offset: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyJson, ContextIdError> {
        if depth > MAX_DEPTH {
            return Err(ContextIdError::TooDeep(MAX_DEPTH));
        }
        match self.peek() {
            None => Err(self.err("expecting value")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(PyJson::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => {
                if self.eat("-Infinity") {
                    Ok(PyJson::Float(f64::NEG_INFINITY))
                } else {
                    self.number()
                }
            }
            Some(_) => {
                if self.eat("null") {
                    Ok(PyJson::Null)
                } else if self.eat("true") {
                    Ok(PyJson::Bool(true))
                } else if self.eat("false") {
                    Ok(PyJson::Bool(false))
                } else if self.eat("NaN") {
                    Ok(PyJson::Float(f64::NAN))
                } else if self.eat("Infinity") {
                    Ok(PyJson::Float(f64::INFINITY))
                } else {
                    Err(self.err("expecting value"))
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Python's NUMBER_RE: `(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?`.
    fn number(&mut self) -> Result<PyJson, ContextIdError> {
        let start = self.pos;
        let negative = self.eat("-");
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expecting value")),
        }
        let int_end = self.pos;
        let mut is_float = false;
        if self.peek() == Some(b'.') && matches!(self.s.get(self.pos + 1), Some(b'0'..=b'9')) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                // The regex would not take a bare "e"; what follows is then extra data.
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        let lexeme = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("invalid number"))?;
        if is_float {
            let f: f64 = lexeme.parse().map_err(|_| self.err("invalid number"))?;
            return Ok(PyJson::Float(f));
        }
        let magnitude = std::str::from_utf8(&self.s[start + usize::from(negative)..int_end])
            .map_err(|_| self.err("invalid number"))?;
        Ok(PyJson::Int(if negative && magnitude != "0" { format!("-{magnitude}") } else { magnitude.to_owned() }))
    }

    fn hex4(&mut self) -> Result<u16, ContextIdError> {
        let h = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u16::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        self.pos += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, ContextIdError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.pos += 1;
            }
            let chunk = std::str::from_utf8(&self.s[start..self.pos]).map_err(|_| self.err("invalid utf-8"))?;
            out.push_str(chunk);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let at = self.pos - 2;
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(ContextIdError::LoneSurrogate(at));
                                }
                                0x10000 + ((u32::from(hi) - 0xd800) << 10) + (u32::from(lo) - 0xdc00)
                            } else {
                                u32::from(hi)
                            };
                            out.push(char::from_u32(code).ok_or(ContextIdError::LoneSurrogate(at))?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("invalid control character")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<PyJson, ContextIdError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat("]") {
            return Ok(PyJson::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Ok(PyJson::Array(items));
            }
            return Err(self.err("expecting ',' or ']'"));
        }
    }

    fn object(&mut self, depth: usize) -> Result<PyJson, ContextIdError> {
        self.pos += 1;
        let mut entries: Vec<(String, PyJson)> = Vec::new();
        // Position of each key in `entries`: a repeated key replaces the value in place (Python's
        // dict), found in constant time so an object of many keys parses in linear time.
        let mut index: HashMap<String, usize> = HashMap::new();
        self.ws();
        if self.eat("}") {
            return Ok(PyJson::Object(entries));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expecting property name"));
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(":") {
                return Err(self.err("expecting ':'"));
            }
            self.ws();
            let val = self.value(depth + 1)?;
            match index.get(&key) {
                Some(&i) => entries[i].1 = val,
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, val));
                }
            }
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Ok(PyJson::Object(entries));
            }
            return Err(self.err("expecting ',' or '}'"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_and_empty_give_zero() {
        assert_eq!(context_to_id(&serde_json::Value::Null), 0);
        assert_eq!(context_to_id(&json!({})), 0);
        assert_eq!(context_to_id_from_json("null").unwrap(), 0);
        assert_eq!(context_to_id_from_json(" { } ").unwrap(), 0);
        // `if not context` in the reference: other falsy values give 0 too.
        assert_eq!(context_to_id(&json!([])), 0);
        assert_eq!(context_to_id(&json!("")), 0);
        assert_eq!(context_to_id(&json!(0)), 0);
        assert_eq!(context_to_id(&json!(false)), 0);
    }

    #[test]
    fn worked_examples_from_the_spec() {
        assert_eq!(context_to_id(&json!({"subset": "train"})), 2326457826);
        assert_eq!(context_to_id(&json!({"a": 1, "b": 2})), 1126534399);
        assert_eq!(context_to_id(&json!({"b": 2, "a": 1})), 1126534399);
        assert_eq!(context_to_id(&json!({"x": 1})), 1346486047);
        assert_eq!(context_to_id(&json!({"x": 1.0})), 3207787874);
    }

    #[test]
    fn deterministic_order_independent_and_value_sensitive() {
        let a = json!({"subset": "train", "augmented": true, "n": {"z": 1, "y": [2, 3]}});
        let b = json!({"n": {"y": [2, 3], "z": 1}, "augmented": true, "subset": "train"});
        assert_eq!(context_to_id(&a), context_to_id(&a));
        assert_eq!(context_to_id(&a), context_to_id(&b));
        assert_ne!(context_to_id(&json!({"subset": "train"})), context_to_id(&json!({"subset": "val"})));
        assert!(context_to_id(&a) > 0);
    }

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (0.0000123, "1.23e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (1e-100, "1e-100"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // Exact ties between two shortest candidates resolve half-even, as in Python.
            (-(1288995545113573.0 + 0.25), "-1288995545113573.2"),
            (135440930876108.0 + 0.125, "135440930876108.12"),
            (0.125, "0.125"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(*f), *want, "{f:e}");
        }
    }

    #[test]
    fn ascii_escapes_match_python() {
        let mut out = String::new();
        write_ascii_string("a\"b\\c\n\r\t\u{08}\u{0c}\u{01}\u{7f}é✓😀/", &mut out);
        assert_eq!(out, r#""a\"b\\c\n\r\t\b\f\u0001\u007f\u00e9\u2713\ud83d\ude00/""#);
    }

    #[test]
    fn raw_parser_follows_json_loads() {
        let v =
            parse_python_json(r#"{"v": 100000000000000000000, "n": -0, "f": -0.0, "e": 1E2, "s": "\ud83d\ude00\/"}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#"{"e":100.0,"f":-0.0,"n":0,"s":"\ud83d\ude00/","v":100000000000000000000}"#
        );
        let v = parse_python_json("[NaN, Infinity, -Infinity, 1e400]").unwrap();
        assert_eq!(canonical_json(&v).unwrap(), "[NaN,Infinity,-Infinity,Infinity]");
        // Duplicate keys keep the last value.
        let v = parse_python_json(r#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(canonical_json(&v).unwrap(), r#"{"a":2}"#);
    }

    #[test]
    fn raw_parser_rejects_what_json_loads_rejects() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", ".5", "\"a\nb\"", "\"\\x\"", "tru", "{} x", "-", "{1: 2}"]
        {
            assert!(matches!(parse_python_json(bad), Err(ContextIdError::Syntax { .. })), "{bad:?}");
        }
        assert!(matches!(parse_python_json(r#""\ud83d""#), Err(ContextIdError::LoneSurrogate(_))));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(parse_python_json(&deep), Err(ContextIdError::TooDeep(MAX_DEPTH)));
    }

    #[test]
    fn serde_path_and_raw_path_agree_on_ordinary_contexts() {
        for text in [
            r#"{"subset": "train"}"#,
            r#"{"lr": 0.0001, "k": [1, 2.5, null, true]}"#,
            r#"{"name": "h\u00e9llo", "nested": {"b": 1, "a": 2}}"#,
            r#"{"big": 18446744073709551615, "neg": -9223372036854775808}"#,
        ] {
            let via_serde = context_to_id(&serde_json::from_str(text).unwrap());
            assert_eq!(via_serde, context_to_id_from_json(text).unwrap(), "{text}");
        }
    }
}
