//! FDB tuple-layer keys, byte-identical to Python's `fdb.tuple.pack`, with strict unpacking and
//! the JSON forms used by `matyan kv dump --prefix TUPLE_JSON`.
//!
//! The encoder is our own rather than `foundationdb_tuple::Element`: that crate packs 2^64-1 as
//! `1c ff…ff`, while the Python binding switches to the variable-length `1d 08 ff…ff` form at
//! 2^64-1 (its `_size_limits[-1]`), and the keys must match the Python bytes exactly. Integers are
//! held as `i128`, which covers every integer the golden file and Matyan's key layout use
//! (up to ±2^70); wider integers in stored keys unpack to [`TupleError::IntTooLarge`].

use uuid::Uuid;

use crate::storage::value::float_to_dump_json;

const NULL: u8 = 0x00;
const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const NESTED: u8 = 0x05;
const NEG_INT_START: u8 = 0x0b;
const INT_ZERO: u8 = 0x14;
const POS_INT_END: u8 = 0x1d;
const DOUBLE: u8 = 0x21;
const FALSE: u8 = 0x26;
const TRUE: u8 = 0x27;
const UUID: u8 = 0x30;
const ESCAPE: u8 = 0xff;

/// Errors of tuple unpacking and of the JSON tuple syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TupleError {
    /// The input ended inside an element.
    #[error("unexpected end of tuple at byte {0}")]
    UnexpectedEof(usize),
    /// A type code Matyan never writes (float32, versionstamps, reserved codes).
    #[error("unsupported tuple type code 0x{code:02x} at byte {offset}")]
    UnsupportedCode { code: u8, offset: usize },
    /// A string element is not valid UTF-8.
    #[error("invalid utf-8 in tuple string at byte {0}")]
    InvalidUtf8(usize),
    /// An integer does not fit the `i128` this layer uses.
    #[error("tuple integer at byte {0} does not fit 128 bits")]
    IntTooLarge(usize),
    /// Bytes follow the one element that was expected.
    #[error("trailing bytes after the tuple element at byte {0}")]
    Trailing(usize),
    /// The JSON given as a tuple is not in the accepted syntax.
    #[error("invalid tuple json: {0}")]
    BadJson(String),
}

/// One element of an FDB tuple.
///
/// Equality compares floats by bit pattern, because `0.0` and `-0.0` (and distinct NaNs) are
/// distinct keys.
#[derive(Debug, Clone)]
pub enum Elem {
    /// `None` (type 00).
    Null,
    /// A byte string (type 01).
    Bytes(Vec<u8>),
    /// A UTF-8 string (type 02).
    Str(String),
    /// A nested tuple, which is also how a Python list packs (type 05).
    Tuple(Vec<Elem>),
    /// An integer (types 0b to 1d).
    Int(i128),
    /// A double (type 21).
    Float(f64),
    /// A bool (types 26 and 27).
    Bool(bool),
    /// A UUID (type 30).
    Uuid(Uuid),
}

impl PartialEq for Elem {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Elem::Null, Elem::Null) => true,
            (Elem::Bytes(a), Elem::Bytes(b)) => a == b,
            (Elem::Str(a), Elem::Str(b)) => a == b,
            (Elem::Tuple(a), Elem::Tuple(b)) => a == b,
            (Elem::Int(a), Elem::Int(b)) => a == b,
            (Elem::Float(a), Elem::Float(b)) => a.to_bits() == b.to_bits(),
            (Elem::Bool(a), Elem::Bool(b)) => a == b,
            (Elem::Uuid(a), Elem::Uuid(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Elem {}

impl From<&str> for Elem {
    fn from(s: &str) -> Self {
        Elem::Str(s.to_owned())
    }
}

impl From<String> for Elem {
    fn from(s: String) -> Self {
        Elem::Str(s)
    }
}

impl From<&String> for Elem {
    fn from(s: &String) -> Self {
        Elem::Str(s.clone())
    }
}

impl From<i64> for Elem {
    fn from(i: i64) -> Self {
        Elem::Int(i128::from(i))
    }
}

impl From<i32> for Elem {
    fn from(i: i32) -> Self {
        Elem::Int(i128::from(i))
    }
}

impl From<u32> for Elem {
    fn from(i: u32) -> Self {
        Elem::Int(i128::from(i))
    }
}

impl From<u64> for Elem {
    fn from(i: u64) -> Self {
        Elem::Int(i128::from(i))
    }
}

impl From<f64> for Elem {
    fn from(f: f64) -> Self {
        Elem::Float(f)
    }
}

impl From<bool> for Elem {
    fn from(b: bool) -> Self {
        Elem::Bool(b)
    }
}

impl From<Uuid> for Elem {
    fn from(u: Uuid) -> Self {
        Elem::Uuid(u)
    }
}

impl From<Vec<u8>> for Elem {
    fn from(b: Vec<u8>) -> Self {
        Elem::Bytes(b)
    }
}

// ---------------------------------------------------------------------------------------------
// Packing

/// Packs a tuple exactly as Python's `fdb.tuple.pack` does.
pub fn pack(elems: &[Elem]) -> Vec<u8> {
    let mut out = Vec::new();
    pack_into(elems, &mut out);
    out
}

/// Appends the packed tuple to `out` (a directory prefix is usually already there).
pub fn pack_into(elems: &[Elem], out: &mut Vec<u8>) {
    for elem in elems {
        encode_elem(elem, out, false);
    }
}

/// Packs a tuple behind a subspace prefix: `prefix + pack(elems)`.
pub fn pack_with_prefix(prefix: &[u8], elems: &[Elem]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    pack_into(elems, &mut out);
    out
}

/// Returns the half-open key range `[prefix + pack(t) + 00, prefix + pack(t) + ff)` of
/// `subspace.range(t)`: every key strictly under `t`, never `t` itself.
pub fn range(prefix: &[u8], elems: &[Elem]) -> (Vec<u8>, Vec<u8>) {
    let base = pack_with_prefix(prefix, elems);
    let mut begin = base.clone();
    begin.push(0x00);
    let mut end = base;
    end.push(0xff);
    (begin, end)
}

fn encode_elem(elem: &Elem, out: &mut Vec<u8>, nested: bool) {
    match elem {
        Elem::Null if nested => out.extend_from_slice(&[NULL, ESCAPE]),
        Elem::Null => out.push(NULL),
        Elem::Bytes(b) => encode_escaped(BYTES, b, out),
        Elem::Str(s) => encode_escaped(STRING, s.as_bytes(), out),
        Elem::Tuple(items) => {
            out.push(NESTED);
            for item in items {
                encode_elem(item, out, true);
            }
            out.push(NULL);
        }
        Elem::Int(i) => encode_int(*i, out),
        Elem::Float(f) => {
            let bits = f.to_bits();
            // Order-preserving transform: flip every bit of negatives, only the sign of others.
            let bits = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
            out.push(DOUBLE);
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Elem::Bool(b) => out.push(if *b { TRUE } else { FALSE }),
        Elem::Uuid(u) => {
            out.push(UUID);
            out.extend_from_slice(u.as_bytes());
        }
    }
}

fn encode_escaped(code: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(code);
    for &b in bytes {
        out.push(b);
        if b == 0x00 {
            out.push(ESCAPE);
        }
    }
    out.push(NULL);
}

/// Writes an integer like the Python binding: minimal big-endian magnitude with the byte count in
/// the type code, ones' complement for negatives, and the `1d`/`0b` length-prefixed forms once
/// the magnitude reaches 2^64-1.
fn encode_int(i: i128, out: &mut Vec<u8>) {
    if i == 0 {
        out.push(INT_ZERO);
        return;
    }
    let magnitude = i.unsigned_abs();
    let be = magnitude.to_be_bytes();
    let skip = be.iter().take_while(|b| **b == 0).count();
    let digits = &be[skip..];
    let n = digits.len() as u8; // at most 16
    let long_form = magnitude >= u128::from(u64::MAX);
    if i > 0 {
        if long_form {
            out.extend_from_slice(&[POS_INT_END, n]);
        } else {
            out.push(INT_ZERO + n);
        }
        out.extend_from_slice(digits);
    } else {
        if long_form {
            out.extend_from_slice(&[NEG_INT_START, n ^ 0xff]);
        } else {
            out.push(INT_ZERO - n);
        }
        out.extend(digits.iter().map(|b| !b));
    }
}

// ---------------------------------------------------------------------------------------------
// Unpacking

/// Unpacks a whole key (without prefix) into its elements, strictly: truncated elements,
/// unsupported type codes, invalid UTF-8 and integers wider than 128 bits are errors.
pub fn unpack(bytes: &[u8]) -> Result<Vec<Elem>, TupleError> {
    let mut dec = Decoder { data: bytes, pos: 0 };
    let mut elems = Vec::new();
    while dec.pos < bytes.len() {
        elems.push(dec.elem(false)?);
    }
    Ok(elems)
}

/// Unpacks bytes that hold exactly one element, without allocating a vector (sequence steps).
pub fn unpack_one(bytes: &[u8]) -> Result<Elem, TupleError> {
    let mut dec = Decoder { data: bytes, pos: 0 };
    let elem = dec.elem(false)?;
    if dec.pos != bytes.len() {
        return Err(TupleError::Trailing(dec.pos));
    }
    Ok(elem)
}

/// Unpacks a key that starts with `prefix`, or returns `None` when it does not.
pub fn unpack_with_prefix(prefix: &[u8], key: &[u8]) -> Option<Result<Vec<Elem>, TupleError>> {
    key.strip_prefix(prefix).map(unpack)
}

/// Decodes a tuple made of exactly `N` integers without allocating (hot keys such as the queue's
/// `(offset, chunk)`); `None` when it holds anything else, fewer or more elements, or an integer
/// beyond 128 bits.
pub fn unpack_ints<const N: usize>(bytes: &[u8]) -> Option<[i128; N]> {
    let mut d = Decoder { data: bytes, pos: 0 };
    let mut out = [0i128; N];
    for slot in &mut out {
        let offset = d.pos;
        let code = d.byte().ok()?;
        if !(NEG_INT_START..=POS_INT_END).contains(&code) {
            return None;
        }
        match d.int(code, offset).ok()? {
            Elem::Int(i) => *slot = i,
            _ => return None,
        }
    }
    (d.pos == bytes.len()).then_some(out)
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn byte(&mut self) -> Result<u8, TupleError> {
        let b = *self.data.get(self.pos).ok_or(TupleError::UnexpectedEof(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], TupleError> {
        let end = self.pos + n;
        let slice = self.data.get(self.pos..end).ok_or(TupleError::UnexpectedEof(self.data.len()))?;
        self.pos = end;
        Ok(slice)
    }

    fn elem(&mut self, nested: bool) -> Result<Elem, TupleError> {
        let offset = self.pos;
        let code = self.byte()?;
        match code {
            NULL => {
                if nested {
                    // Inside a nested tuple a null is written `00 ff`; the caller has already
                    // treated a bare `00` as the end of the tuple.
                    self.byte()?;
                }
                Ok(Elem::Null)
            }
            BYTES => Ok(Elem::Bytes(self.escaped()?)),
            STRING => {
                let start = self.pos;
                let raw = self.escaped()?;
                String::from_utf8(raw).map(Elem::Str).map_err(|_| TupleError::InvalidUtf8(start))
            }
            NESTED => {
                let mut items = Vec::new();
                loop {
                    match self.data.get(self.pos) {
                        None => return Err(TupleError::UnexpectedEof(self.pos)),
                        Some(&NULL) if self.data.get(self.pos + 1) != Some(&ESCAPE) => {
                            self.pos += 1;
                            return Ok(Elem::Tuple(items));
                        }
                        Some(_) => items.push(self.elem(true)?),
                    }
                }
            }
            NEG_INT_START..=POS_INT_END => self.int(code, offset),
            DOUBLE => {
                let mut buf = [0u8; 8];
                buf.copy_from_slice(self.take(8)?);
                let bits = u64::from_be_bytes(buf);
                let bits = if bits >> 63 == 1 { bits ^ (1 << 63) } else { !bits };
                Ok(Elem::Float(f64::from_bits(bits)))
            }
            FALSE => Ok(Elem::Bool(false)),
            TRUE => Ok(Elem::Bool(true)),
            UUID => {
                let mut buf = [0u8; 16];
                buf.copy_from_slice(self.take(16)?);
                Ok(Elem::Uuid(Uuid::from_bytes(buf)))
            }
            _ => Err(TupleError::UnsupportedCode { code, offset }),
        }
    }

    /// Reads a `00`-terminated body in which `00 ff` stands for a literal `00`.
    fn escaped(&mut self) -> Result<Vec<u8>, TupleError> {
        let mut out = Vec::new();
        loop {
            // Copies up to the next `00` at once: key strings rarely hold one.
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let Some(zero) = rest.iter().position(|&b| b == 0x00) else {
                return Err(TupleError::UnexpectedEof(self.data.len()));
            };
            out.extend_from_slice(&rest[..zero]);
            self.pos += zero + 1;
            if self.data.get(self.pos) == Some(&ESCAPE) {
                self.pos += 1;
                out.push(0x00);
            } else {
                return Ok(out);
            }
        }
    }

    fn int(&mut self, code: u8, offset: usize) -> Result<Elem, TupleError> {
        let (negative, n) = match code {
            POS_INT_END => (false, usize::from(self.byte()?)),
            NEG_INT_START => (true, usize::from(self.byte()? ^ 0xff)),
            c if c >= INT_ZERO => (false, usize::from(c - INT_ZERO)),
            c => (true, usize::from(INT_ZERO - c)),
        };
        let digits = self.take(n)?;
        // Leading zero bytes (non-minimal encodings) are tolerated, as Python does.
        let mut magnitude = 0u128;
        let mut significant = 0usize;
        for &b in digits {
            let b = if negative { !b } else { b };
            if significant == 0 && b == 0 {
                continue;
            }
            significant += 1;
            if significant > 16 {
                return Err(TupleError::IntTooLarge(offset));
            }
            magnitude = (magnitude << 8) | u128::from(b);
        }
        let value = if negative {
            0i128.checked_sub_unsigned(magnitude).ok_or(TupleError::IntTooLarge(offset))?
        } else {
            i128::try_from(magnitude).map_err(|_| TupleError::IntTooLarge(offset))?
        };
        Ok(Elem::Int(value))
    }
}

// ---------------------------------------------------------------------------------------------
// JSON forms

impl Elem {
    /// Renders the element as JSON for the dump: strings, numbers (floats always with a fraction
    /// or exponent, non-finite ones as `"NaN"`, `"Infinity"`, `"-Infinity"`), booleans, null,
    /// `{"bytes":"<hex>"}`, `{"uuid":"<hyphenated>"}`, nested tuples as arrays, and integers
    /// beyond 64 bits as `{"int":"<decimal>"}`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match self {
            Elem::Null => J::Null,
            Elem::Bytes(b) => json!({ "bytes": hex::encode(b) }),
            Elem::Str(s) => J::String(s.clone()),
            Elem::Tuple(items) => J::Array(items.iter().map(Elem::to_json).collect()),
            Elem::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    J::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    J::from(v)
                } else {
                    json!({ "int": i.to_string() })
                }
            }
            Elem::Float(f) => float_to_dump_json(*f),
            Elem::Bool(b) => J::Bool(*b),
            Elem::Uuid(u) => json!({ "uuid": u.hyphenated().to_string() }),
        }
    }

    /// Parses one element from its JSON form, the inverse of [`Elem::to_json`] for everything but
    /// non-finite floats: a JSON string is always a string element, so non-finite floats are
    /// written `{"float":"NaN"}` (also `"Infinity"`, `"-Infinity"`, or a number). A JSON number
    /// without fraction or exponent is an integer (`1`), any other a double (`1.0`).
    pub fn from_json(json: &serde_json::Value) -> Result<Elem, TupleError> {
        use serde_json::Value as J;
        let bad = |what: &str| TupleError::BadJson(format!("{what}: {json}"));
        Ok(match json {
            J::Null => Elem::Null,
            J::Bool(b) => Elem::Bool(*b),
            J::String(s) => Elem::Str(s.clone()),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Elem::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    Elem::Int(i128::from(u))
                } else {
                    Elem::Float(n.as_f64().ok_or_else(|| bad("number"))?)
                }
            }
            J::Array(items) => Elem::Tuple(items.iter().map(Elem::from_json).collect::<Result<_, _>>()?),
            J::Object(map) => {
                let mut entries = map.iter();
                let (Some((key, val)), None) = (entries.next(), entries.next()) else {
                    return Err(bad("an object must have exactly one key"));
                };
                match (key.as_str(), val) {
                    ("bytes", J::String(h)) => Elem::Bytes(hex::decode(h).map_err(|_| bad("bytes must be hex"))?),
                    ("uuid", J::String(u)) => Elem::Uuid(Uuid::parse_str(u).map_err(|_| bad("invalid uuid"))?),
                    ("int", J::String(d)) => Elem::Int(d.parse().map_err(|_| bad("int must be decimal digits"))?),
                    ("float", J::Number(n)) => Elem::Float(n.as_f64().ok_or_else(|| bad("number"))?),
                    ("float", J::String(s)) => Elem::Float(match s.as_str() {
                        "NaN" => f64::NAN,
                        "Infinity" => f64::INFINITY,
                        "-Infinity" => f64::NEG_INFINITY,
                        _ => return Err(bad("float must be NaN, Infinity or -Infinity")),
                    }),
                    _ => return Err(bad("unknown object form")),
                }
            }
        })
    }
}

/// Renders a tuple as a JSON array of element forms (see [`Elem::to_json`]).
pub fn to_json(elems: &[Elem]) -> serde_json::Value {
    serde_json::Value::Array(elems.iter().map(Elem::to_json).collect())
}

/// Parses a `--prefix TUPLE_JSON` argument: a JSON array of element forms (see
/// [`Elem::from_json`]).
pub fn parse_json_tuple(text: &str) -> Result<Vec<Elem>, TupleError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| TupleError::BadJson(e.to_string()))?;
    match &json {
        serde_json::Value::Array(items) => items.iter().map(Elem::from_json).collect(),
        _ => Err(TupleError::BadJson(format!("a tuple must be a json array: {json}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hexpack(elems: &[Elem]) -> String {
        hex::encode(pack(elems))
    }

    fn roundtrip(elems: Vec<Elem>) {
        let bytes = pack(&elems);
        assert_eq!(unpack(&bytes).unwrap(), elems, "{}", hex::encode(&bytes));
    }

    #[test]
    fn packs_int_boundaries_like_python() {
        let cases: &[(i128, &str)] = &[
            (0, "14"),
            (1, "1501"),
            (-1, "13fe"),
            (255, "15ff"),
            (-255, "1300"),
            (256, "160100"),
            (-256, "12feff"),
            (i64::MAX as i128, "1c7fffffffffffffff"),
            (i64::MIN as i128, "0c7fffffffffffffff"),
            (u64::MAX as i128 - 1, "1cfffffffffffffffe"),
            (u64::MAX as i128, "1d08ffffffffffffffff"),
            (-(u64::MAX as i128), "0bf70000000000000000"),
            (1i128 << 64, "1d09010000000000000000"),
            (-(1i128 << 64), "0bf6feffffffffffffffff"),
            (1i128 << 70, "1d09400000000000000000"),
            (i128::MAX, "1d107fffffffffffffffffffffffffffffff"),
            (i128::MIN, "0bef7fffffffffffffffffffffffffffffff"),
        ];
        for (i, want) in cases {
            assert_eq!(hexpack(&[Elem::Int(*i)]), *want, "int {i}");
            roundtrip(vec![Elem::Int(*i)]);
        }
    }

    #[test]
    fn packs_floats_with_order_preserving_flip() {
        assert_eq!(hexpack(&[Elem::Float(0.0)]), "218000000000000000");
        assert_eq!(hexpack(&[Elem::Float(-0.0)]), "217fffffffffffffff");
        assert_eq!(hexpack(&[Elem::Float(-1.5)]), "214007ffffffffffff");
        for f in [0.0, -0.0, 1.5, -1.5, f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            roundtrip(vec![Elem::Float(f)]);
        }
        // Byte order matches numeric order.
        let a = pack(&[Elem::Float(-2.0)]);
        let b = pack(&[Elem::Float(-1.0)]);
        let c = pack(&[Elem::Float(3.0)]);
        assert!(a < b && b < c);
    }

    #[test]
    fn nested_tuples_escape_null() {
        let t = vec![Elem::Tuple(vec![Elem::from("x"), Elem::Null, Elem::Tuple(vec![Elem::Null]), Elem::Int(5)])];
        assert_eq!(hexpack(&t), "0502780000ff0500ff00150500");
        roundtrip(t);
        roundtrip(vec![Elem::Tuple(vec![]), Elem::Null, Elem::Tuple(vec![])]);
    }

    #[test]
    fn strings_and_bytes_escape_nul() {
        assert_eq!(hexpack(&[Elem::from("a\0b")]), "026100ff6200");
        roundtrip(vec![Elem::from("a\0b"), Elem::Bytes(vec![0, 0xff, 0])]);
    }

    #[test]
    fn range_covers_keys_strictly_under_the_tuple() {
        let (begin, end) = range(&[0x15, 0x3d], &[Elem::from("_deleted")]);
        assert_eq!(hex::encode(&begin), "153d025f64656c657465640000");
        assert_eq!(hex::encode(&end), "153d025f64656c6574656400ff");
        let own = pack_with_prefix(&[0x15, 0x3d], &[Elem::from("_deleted")]);
        let child = pack_with_prefix(&[0x15, 0x3d], &[Elem::from("_deleted"), Elem::from("r")]);
        assert!(own < begin);
        assert!(begin <= child && child < end);
    }

    #[test]
    fn strict_unpack_errors() {
        assert_eq!(unpack(&[0x02, 0x61]), Err(TupleError::UnexpectedEof(2)));
        assert!(matches!(unpack(&[0x20, 0, 0, 0, 0]), Err(TupleError::UnsupportedCode { code: 0x20, .. })));
        assert!(matches!(unpack(&[0x33]), Err(TupleError::UnsupportedCode { code: 0x33, .. })));
        assert_eq!(unpack(&[0x02, 0xff, 0xfe, 0x00]), Err(TupleError::InvalidUtf8(1)));
        assert!(matches!(unpack(&[0x18, 1]), Err(TupleError::UnexpectedEof(_))));
        assert!(matches!(unpack(&[0x05, 0x14]), Err(TupleError::UnexpectedEof(_))));
        let mut wide = vec![0x1d, 17];
        wide.extend([1u8; 17]);
        assert_eq!(unpack(&wide), Err(TupleError::IntTooLarge(0)));
        // 2^127 does not fit i128 either.
        let mut edge = vec![0x1d, 16, 0x80];
        edge.extend([0u8; 15]);
        assert_eq!(unpack(&edge), Err(TupleError::IntTooLarge(0)));
        assert_eq!(unpack(&[]).unwrap(), vec![]);
    }

    #[test]
    fn unpack_ints_reads_exactly_n_integers_as_unpack_does_and_refuses_anything_else() {
        for (a, b) in [(0i128, 0i128), (7, -1), (i128::from(i64::MAX), i128::from(i64::MIN)), (1 << 100, -(1 << 90))] {
            let key = pack(&[Elem::Int(a), Elem::Int(b)]);
            assert_eq!(unpack_ints::<2>(&key), Some([a, b]), "{a}, {b}");
            assert_eq!(unpack(&key).unwrap(), vec![Elem::Int(a), Elem::Int(b)]);
        }
        // A non-minimal encoding (leading zero bytes) is tolerated, as by unpack.
        assert_eq!(unpack_ints::<1>(&[0x16, 0x00, 0x05]), Some([5]));
        assert_eq!(unpack(&[0x16, 0x00, 0x05]).unwrap(), vec![Elem::Int(5)]);
        let two = pack(&[Elem::Int(1), Elem::Int(2)]);
        assert_eq!(unpack_ints::<1>(&two), None, "an element too many");
        assert_eq!(unpack_ints::<3>(&two), None, "an element too few");
        assert_eq!(unpack_ints::<2>(&pack(&[Elem::Int(1), Elem::Str("x".into())])), None);
        assert_eq!(unpack_ints::<1>(&[0x15]), None, "truncated");
        let mut wide = vec![0x1d, 17];
        wide.extend([1u8; 17]);
        assert_eq!(unpack_ints::<1>(&wide), None, "beyond 128 bits");
    }

    #[test]
    fn unpack_with_prefix_strips_or_refuses() {
        let key = pack_with_prefix(b"P", &[Elem::Int(1)]);
        assert_eq!(unpack_with_prefix(b"P", &key), Some(Ok(vec![Elem::Int(1)])));
        assert_eq!(unpack_with_prefix(b"Q", &key), None);
    }

    #[test]
    fn json_forms_roundtrip_and_keep_int_float_apart() {
        let text = r#"["runs", 1, 1.0, -2, true, null, {"bytes":"00ff"},
            {"uuid":"849a0d4e-ca52-47e9-bf85-a7386bb69c83"}, ["a", [1]],
            {"int":"1180591620717411303424"}, {"float":"NaN"}, {"float":"-Infinity"},
            18446744073709551615]"#;
        let elems = parse_json_tuple(text).unwrap();
        assert_eq!(elems[1], Elem::Int(1));
        assert_eq!(elems[2], Elem::Float(1.0));
        assert_eq!(elems[9], Elem::Int(1i128 << 70));
        assert_eq!(elems[12], Elem::Int(u64::MAX as i128));
        let rendered = serde_json::to_string(&to_json(&elems)).unwrap();
        assert_eq!(
            rendered,
            r#"["runs",1,1.0,-2,true,null,{"bytes":"00ff"},{"uuid":"849a0d4e-ca52-47e9-bf85-a7386bb69c83"},["a",[1]],{"int":"1180591620717411303424"},"NaN","-Infinity",18446744073709551615]"#
        );
        // Everything but the non-finite floats parses back to the same elements.
        let back = parse_json_tuple(
            &rendered.replace("\"NaN\"", "{\"float\":\"NaN\"}").replace("\"-Infinity\"", "{\"float\":\"-Infinity\"}"),
        )
        .unwrap();
        assert_eq!(back, elems);
    }

    #[test]
    fn json_syntax_errors() {
        for bad in [
            "{}",
            "[{\"bytes\":\"zz\"}]",
            "[{\"uuid\":\"nope\"}]",
            "[{\"a\":1,\"b\":2}]",
            "[{\"float\":\"nan\"}]",
            "[{\"what\":1}]",
            "not json",
        ] {
            assert!(matches!(parse_json_tuple(bad), Err(TupleError::BadJson(_))), "{bad}");
        }
    }
}
