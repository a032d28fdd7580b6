//! Matyan's msgpack value model and its byte-exact codec (msgpack-python `packb(use_bin_type=True)`).
//!
//! Every stored value that is not an index entry is msgpack, written by the Python reference as
//! `msgpack.packb(v, use_bin_type=True, default=ext)` and read with `raw=False, strict_map_key=True`
//! (spec §3.3). [`encode`] reproduces those bytes exactly: the smallest integer encoding with the
//! unsigned forms for non-negative values, every float as float64 (`cb`), `str8` allowed, maps in
//! insertion order, and datetimes as ext type 1 whose payload is itself a msgpack float64.
//! [`decode`] is strict: truncated input, trailing bytes, invalid UTF-8 and map keys other than
//! str or bytes are errors, as they are in msgpack-python.

use std::collections::HashMap;

use rmp::Marker;

/// The ext type code under which the Python reference stores datetimes.
pub const DATETIME_EXT: i8 = 1;

/// Nesting depth beyond which [`decode`] gives up instead of risking the stack.
const MAX_DEPTH: usize = 128;

/// Errors of the msgpack value codec and of its JSON conversions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The integer does not fit msgpack's range (-2^63 ..= 2^64-1); Python raises OverflowError.
    #[error("integer {0} out of msgpack range")]
    IntOutOfRange(i128),
    /// A string, binary, array, map or ext is longer than msgpack's 32-bit length.
    #[error("{kind} of length {len} exceeds the msgpack limit")]
    TooLong { kind: &'static str, len: usize },
    /// The input ended in the middle of a value.
    #[error("unexpected end of msgpack input at byte {0}")]
    UnexpectedEof(usize),
    /// Bytes remain after the first complete value.
    #[error("{0} trailing bytes after the msgpack value")]
    TrailingBytes(usize),
    /// The byte is not a valid msgpack marker (0xc1 is reserved).
    #[error("invalid msgpack marker 0x{marker:02x} at byte {offset}")]
    InvalidMarker { marker: u8, offset: usize },
    /// A str value is not valid UTF-8 (msgpack-python decodes with raw=False).
    #[error("invalid utf-8 in msgpack str at byte {0}")]
    InvalidUtf8(usize),
    /// A map key is neither str nor bytes (msgpack-python's strict_map_key).
    #[error("map key of type {0} not allowed (strict_map_key)")]
    InvalidMapKey(&'static str),
    /// An ext type 1 payload is not a msgpack number.
    #[error("invalid datetime ext payload")]
    InvalidDateTime,
    /// The value nests deeper than the decoder allows.
    #[error("msgpack value nests deeper than {0} levels")]
    TooDeep(usize),
    /// The value has no plain JSON form (bytes, datetime, ext, non-finite float, non-str key).
    #[error("value of type {0} has no plain json form")]
    NotJson(&'static str),
    /// Writing through the rmp encoder failed.
    #[error("msgpack write failed: {0}")]
    Write(String),
}

/// A msgpack value as Matyan stores it.
///
/// Integers are held as `i128` so that the whole msgpack range, from -2^63 to 2^64-1, fits one
/// variant; [`encode`] rejects values outside that range. Maps keep insertion order. Equality is
/// structural, with floats and datetimes compared by bit pattern (so NaN equals itself and 0.0
/// differs from -0.0, as their encodings do).
#[derive(Debug, Clone)]
pub enum Value {
    /// msgpack nil, Python None.
    Nil,
    /// msgpack bool.
    Bool(bool),
    /// Any msgpack integer, signed or unsigned.
    Int(i128),
    /// A float64 (float32 input is widened).
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// A byte string (msgpack bin).
    Bin(Vec<u8>),
    /// An array (Python list or tuple).
    Array(Vec<Value>),
    /// A map in insertion order.
    Map(Vec<(Value, Value)>),
    /// A timezone-aware datetime, as POSIX seconds (ext type 1).
    DateTime(f64),
    /// An ext value with an unknown type code, passed through unchanged.
    Ext(i8, Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Nil, Value::Nil) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) | (Value::DateTime(a), Value::DateTime(b)) => a.to_bits() == b.to_bits(),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bin(a), Value::Bin(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            (Value::Ext(ta, a), Value::Ext(tb, b)) => ta == tb && a == b,
            _ => false,
        }
    }
}

impl Value {
    /// Returns the Python type name of the value, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bin(_) => "bytes",
            Value::Array(_) => "list",
            Value::Map(_) => "dict",
            Value::DateTime(_) => "datetime",
            Value::Ext(_, _) => "ext",
        }
    }

    /// Returns Python's truthiness of the value (`if value:`): empty containers, `0`, `0.0`, `""`,
    /// `False` and `None` are false.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bin(b) => !b.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Map(entries) => !entries.is_empty(),
            Value::DateTime(_) | Value::Ext(..) => true,
        }
    }

    /// Returns the string slice when the value is a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Returns the integer when the value is an int that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// Returns the value as `f64` when it is a float or an int (Python's numeric widening).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// Looks up a str key in a map value (the last matching entry wins, as in a Python dict).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to plain JSON, failing on values JSON cannot hold (bytes, datetimes, ext values,
    /// non-finite floats, maps with non-str keys, integers beyond 64 bits).
    pub fn to_json(&self) -> Result<serde_json::Value, ValueError> {
        Ok(match self {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => int_to_json(*i).ok_or(ValueError::NotJson("int"))?,
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).ok_or(ValueError::NotJson("float"))?
            }
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect::<Result<_, _>>()?)
            }
            Value::Map(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (k, v) in entries {
                    let Value::Str(key) = k else {
                        return Err(ValueError::NotJson(k.type_name()));
                    };
                    map.insert(key.clone(), v.to_json()?);
                }
                serde_json::Value::Object(map)
            }
            Value::Bin(_) | Value::DateTime(_) | Value::Ext(_, _) => {
                return Err(ValueError::NotJson(self.type_name()));
            }
        })
    }

    /// Renders the value as JSON for `matyan kv dump`; this never fails.
    ///
    /// Bytes become `{"bytes":"<hex>"}`, datetimes `{"datetime":<epoch seconds>}`, unknown ext
    /// values `{"ext":<code>,"bytes":"<hex>"}`, non-finite floats the strings `"NaN"`,
    /// `"Infinity"` and `"-Infinity"`, integers beyond 64 bits decimal strings, and maps with a
    /// key that is not a str `{"map":[[key,value],...]}`.
    pub fn to_dump_json(&self) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match self {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => int_to_json(*i).unwrap_or_else(|| J::String(i.to_string())),
            Value::Float(f) => float_to_dump_json(*f),
            Value::Str(s) => J::String(s.clone()),
            Value::Bin(b) => json!({ "bytes": hex::encode(b) }),
            Value::Array(items) => J::Array(items.iter().map(Value::to_dump_json).collect()),
            Value::Map(entries) => {
                if entries.iter().all(|(k, _)| matches!(k, Value::Str(_))) {
                    let mut map = serde_json::Map::with_capacity(entries.len());
                    for (k, v) in entries {
                        if let Value::Str(key) = k {
                            map.insert(key.clone(), v.to_dump_json());
                        }
                    }
                    J::Object(map)
                } else {
                    let pairs =
                        entries.iter().map(|(k, v)| J::Array(vec![k.to_dump_json(), v.to_dump_json()])).collect();
                    json!({ "map": J::Array(pairs) })
                }
            }
            Value::DateTime(ts) => json!({ "datetime": float_to_dump_json(*ts) }),
            Value::Ext(code, data) => json!({ "ext": code, "bytes": hex::encode(data) }),
        }
    }
}

/// Renders a float for the dump: a JSON number when finite, else `"NaN"`, `"Infinity"` or
/// `"-Infinity"`.
pub fn float_to_dump_json(f: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => serde_json::Value::Number(n),
        None if f.is_nan() => serde_json::Value::String("NaN".to_owned()),
        None if f > 0.0 => serde_json::Value::String("Infinity".to_owned()),
        None => serde_json::Value::String("-Infinity".to_owned()),
    }
}

fn int_to_json(i: i128) -> Option<serde_json::Value> {
    if let Ok(v) = i64::try_from(i) {
        Some(serde_json::Value::from(v))
    } else {
        u64::try_from(i).ok().map(serde_json::Value::from)
    }
}

impl From<&serde_json::Value> for Value {
    /// Converts JSON the way Python's `json.loads` would: integers become ints, every other
    /// number a float, and objects keep their order.
    fn from(json: &serde_json::Value) -> Self {
        match json {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    Value::Int(i128::from(u))
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => Value::Array(items.iter().map(Value::from).collect()),
            serde_json::Value::Object(map) => {
                Value::Map(map.iter().map(|(k, v)| (Value::Str(k.clone()), Value::from(v))).collect())
            }
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(json: serde_json::Value) -> Self {
        Value::from(&json)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i128::from(i))
    }
}

impl From<u64> for Value {
    fn from(u: u64) -> Self {
        Value::Int(i128::from(u))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Encodes a value exactly as `msgpack.packb(value, use_bin_type=True, default=ext)` does.
pub fn encode(value: &Value) -> Result<Vec<u8>, ValueError> {
    // Room for a float or a short string at once (a growing `Vec` allocated twice for a float).
    let mut out = Vec::with_capacity(16);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the msgpack encoding of a value to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) -> Result<(), ValueError> {
    match value {
        Value::Nil => wr(rmp::encode::write_nil(out))?,
        Value::Bool(b) => wr(rmp::encode::write_bool(out, *b))?,
        Value::Int(i) => encode_int(*i, out)?,
        Value::Float(f) => wr(rmp::encode::write_f64(out, *f))?,
        Value::Str(s) => {
            wr(rmp::encode::write_str_len(out, len32("str", s.len())?))?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            wr(rmp::encode::write_bin_len(out, len32("bytes", b.len())?))?;
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            wr(rmp::encode::write_array_len(out, len32("list", items.len())?))?;
            for item in items {
                encode_into(item, out)?;
            }
        }
        Value::Map(entries) => {
            wr(rmp::encode::write_map_len(out, len32("dict", entries.len())?))?;
            for (k, v) in entries {
                encode_into(k, out)?;
                encode_into(v, out)?;
            }
        }
        Value::DateTime(ts) => {
            // The payload is packb(dt.timestamp()): a msgpack float64, 9 bytes.
            let mut payload = Vec::with_capacity(9);
            wr(rmp::encode::write_f64(&mut payload, *ts))?;
            write_ext(DATETIME_EXT, &payload, out)?;
        }
        Value::Ext(code, data) => write_ext(*code, data, out)?,
    }
    Ok(())
}

/// Appends the msgpack encoding of an `i64` (smallest form, unsigned for non-negative values).
pub fn encode_i64(i: i64, out: &mut Vec<u8>) {
    // Cannot fail: every i64 is in msgpack's range and writes to a Vec are infallible.
    let _ = encode_int(i128::from(i), out);
}

/// Appends the msgpack encoding of an `f64` (always float64, `cb`).
pub fn encode_f64(f: f64, out: &mut Vec<u8>) {
    out.push(0xcb);
    out.extend_from_slice(&f.to_be_bytes());
}

fn write_ext(code: i8, data: &[u8], out: &mut Vec<u8>) -> Result<(), ValueError> {
    wr(rmp::encode::write_ext_meta(out, len32("ext", data.len())?, code))?;
    out.extend_from_slice(data);
    Ok(())
}

/// Writes an int the way msgpack-python does: unsigned forms for every non-negative value,
/// signed forms only for negative ones, always the smallest that fits.
fn encode_int(i: i128, out: &mut Vec<u8>) -> Result<(), ValueError> {
    if i >= 0 {
        let u = u64::try_from(i).map_err(|_| ValueError::IntOutOfRange(i))?;
        if u < 128 {
            wr(rmp::encode::write_pfix(out, u as u8))
        } else if let Ok(v) = u8::try_from(u) {
            wr(rmp::encode::write_u8(out, v))
        } else if let Ok(v) = u16::try_from(u) {
            wr(rmp::encode::write_u16(out, v))
        } else if let Ok(v) = u32::try_from(u) {
            wr(rmp::encode::write_u32(out, v))
        } else {
            wr(rmp::encode::write_u64(out, u))
        }
    } else {
        let s = i64::try_from(i).map_err(|_| ValueError::IntOutOfRange(i))?;
        if s >= -32 {
            wr(rmp::encode::write_nfix(out, s as i8))
        } else if let Ok(v) = i8::try_from(s) {
            wr(rmp::encode::write_i8(out, v))
        } else if let Ok(v) = i16::try_from(s) {
            wr(rmp::encode::write_i16(out, v))
        } else if let Ok(v) = i32::try_from(s) {
            wr(rmp::encode::write_i32(out, v))
        } else {
            wr(rmp::encode::write_i64(out, s))
        }
    }
}

fn len32(kind: &'static str, len: usize) -> Result<u32, ValueError> {
    u32::try_from(len).map_err(|_| ValueError::TooLong { kind, len })
}

/// Maps an rmp write error (which cannot happen when writing to a `Vec`) into ours.
fn wr<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<(), ValueError> {
    r.map(|_| ()).map_err(|e| ValueError::Write(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes one msgpack value as `msgpack.unpackb(data, raw=False, strict_map_key=True,
/// ext_hook=...)` does, rejecting trailing bytes.
///
/// Ext type 1 becomes [`Value::DateTime`]; other ext codes stay [`Value::Ext`]. Duplicate map keys
/// collapse as in a Python dict: the first position is kept with the last value.
pub fn decode(data: &[u8]) -> Result<Value, ValueError> {
    let mut dec = Decoder { data, pos: 0 };
    let value = dec.value(0)?;
    if dec.pos != data.len() {
        return Err(ValueError::TrailingBytes(data.len() - dec.pos));
    }
    Ok(value)
}

struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

/// A hashable view of an allowed map key, for collapsing duplicates.
#[derive(PartialEq, Eq, Hash)]
enum KeyRef {
    Str(String),
    Bin(Vec<u8>),
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ValueError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or(ValueError::UnexpectedEof(self.data.len()))?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ValueError> {
        let mut buf = [0u8; N];
        buf.copy_from_slice(self.take(N)?);
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, ValueError> {
        Ok(self.array::<1>()?[0])
    }

    fn len(&mut self, width: usize) -> Result<usize, ValueError> {
        Ok(match width {
            1 => usize::from(self.u8()?),
            2 => usize::from(u16::from_be_bytes(self.array()?)),
            _ => u32::from_be_bytes(self.array()?) as usize,
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, ValueError> {
        if depth > MAX_DEPTH {
            return Err(ValueError::TooDeep(MAX_DEPTH));
        }
        let offset = self.pos;
        let byte = self.u8()?;
        Ok(match Marker::from_u8(byte) {
            Marker::FixPos(v) => Value::Int(i128::from(v)),
            Marker::FixNeg(v) => Value::Int(i128::from(v)),
            Marker::Null => Value::Nil,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::U8 => Value::Int(i128::from(self.u8()?)),
            Marker::U16 => Value::Int(i128::from(u16::from_be_bytes(self.array()?))),
            Marker::U32 => Value::Int(i128::from(u32::from_be_bytes(self.array()?))),
            Marker::U64 => Value::Int(i128::from(u64::from_be_bytes(self.array()?))),
            Marker::I8 => Value::Int(i128::from(i8::from_be_bytes(self.array()?))),
            Marker::I16 => Value::Int(i128::from(i16::from_be_bytes(self.array()?))),
            Marker::I32 => Value::Int(i128::from(i32::from_be_bytes(self.array()?))),
            Marker::I64 => Value::Int(i128::from(i64::from_be_bytes(self.array()?))),
            Marker::F32 => Value::Float(f64::from(f32::from_be_bytes(self.array()?))),
            Marker::F64 => Value::Float(f64::from_be_bytes(self.array()?)),
            Marker::FixStr(n) => self.str(usize::from(n))?,
            Marker::Str8 => {
                let n = self.len(1)?;
                self.str(n)?
            }
            Marker::Str16 => {
                let n = self.len(2)?;
                self.str(n)?
            }
            Marker::Str32 => {
                let n = self.len(4)?;
                self.str(n)?
            }
            Marker::Bin8 => {
                let n = self.len(1)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::Bin16 => {
                let n = self.len(2)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::Bin32 => {
                let n = self.len(4)?;
                Value::Bin(self.take(n)?.to_vec())
            }
            Marker::FixArray(n) => self.seq(usize::from(n), depth)?,
            Marker::Array16 => {
                let n = self.len(2)?;
                self.seq(n, depth)?
            }
            Marker::Array32 => {
                let n = self.len(4)?;
                self.seq(n, depth)?
            }
            Marker::FixMap(n) => self.map(usize::from(n), depth)?,
            Marker::Map16 => {
                let n = self.len(2)?;
                self.map(n, depth)?
            }
            Marker::Map32 => {
                let n = self.len(4)?;
                self.map(n, depth)?
            }
            Marker::FixExt1 => self.ext(1)?,
            Marker::FixExt2 => self.ext(2)?,
            Marker::FixExt4 => self.ext(4)?,
            Marker::FixExt8 => self.ext(8)?,
            Marker::FixExt16 => self.ext(16)?,
            Marker::Ext8 => {
                let n = self.len(1)?;
                self.ext(n)?
            }
            Marker::Ext16 => {
                let n = self.len(2)?;
                self.ext(n)?
            }
            Marker::Ext32 => {
                let n = self.len(4)?;
                self.ext(n)?
            }
            Marker::Reserved => {
                return Err(ValueError::InvalidMarker { marker: byte, offset });
            }
        })
    }

    fn str(&mut self, n: usize) -> Result<Value, ValueError> {
        let start = self.pos;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map(|s| Value::Str(s.to_owned())).map_err(|_| ValueError::InvalidUtf8(start))
    }

    fn seq(&mut self, n: usize, depth: usize) -> Result<Value, ValueError> {
        // Every element takes at least one byte, so a bogus length cannot over-allocate.
        let mut items = Vec::with_capacity(n.min(self.data.len() - self.pos));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, ValueError> {
        let mut entries: Vec<(Value, Value)> = Vec::with_capacity(n.min(self.data.len() - self.pos));
        let mut index: HashMap<KeyRef, usize> = HashMap::new();
        for _ in 0..n {
            let key = self.value(depth + 1)?;
            let key_ref = match &key {
                Value::Str(s) => KeyRef::Str(s.clone()),
                Value::Bin(b) => KeyRef::Bin(b.clone()),
                other => return Err(ValueError::InvalidMapKey(other.type_name())),
            };
            let value = self.value(depth + 1)?;
            match index.get(&key_ref) {
                Some(&at) => entries[at].1 = value,
                None => {
                    index.insert(key_ref, entries.len());
                    entries.push((key, value));
                }
            }
        }
        Ok(Value::Map(entries))
    }

    fn ext(&mut self, n: usize) -> Result<Value, ValueError> {
        let code = i8::from_be_bytes(self.array()?);
        let data = self.take(n)?;
        if code != DATETIME_EXT {
            return Ok(Value::Ext(code, data.to_vec()));
        }
        // The reference's ext_hook is datetime.fromtimestamp(unpackb(data), tz=utc).
        match decode(data).map_err(|_| ValueError::InvalidDateTime)? {
            Value::Float(ts) => Ok(Value::DateTime(ts)),
            Value::Int(i) => Ok(Value::DateTime(i as f64)),
            _ => Err(ValueError::InvalidDateTime),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &Value) -> String {
        hex::encode(encode(v).unwrap())
    }

    fn roundtrip(v: Value) {
        let bytes = encode(&v).unwrap();
        assert_eq!(decode(&bytes).unwrap(), v, "{}", hex::encode(&bytes));
    }

    #[test]
    fn encodes_int_widths_like_msgpack_python() {
        let cases: &[(i128, &str)] = &[
            (0, "00"),
            (127, "7f"),
            (128, "cc80"),
            (255, "ccff"),
            (256, "cd0100"),
            (65535, "cdffff"),
            (65536, "ce00010000"),
            (4294967296, "cf0000000100000000"),
            (u64::MAX as i128, "cfffffffffffffffff"),
            (-1, "ff"),
            (-32, "e0"),
            (-33, "d0df"),
            (-128, "d080"),
            (-129, "d1ff7f"),
            (-32768, "d18000"),
            (-32769, "d2ffff7fff"),
            (-2147483649, "d3ffffffff7fffffff"),
            (i64::MIN as i128, "d38000000000000000"),
        ];
        for (i, want) in cases {
            assert_eq!(hex(&Value::Int(*i)), *want, "int {i}");
            roundtrip(Value::Int(*i));
        }
    }

    #[test]
    fn rejects_ints_outside_msgpack_range() {
        assert_eq!(encode(&Value::Int(u64::MAX as i128 + 1)), Err(ValueError::IntOutOfRange(u64::MAX as i128 + 1)));
        assert!(matches!(encode(&Value::Int(i64::MIN as i128 - 1)), Err(ValueError::IntOutOfRange(_))));
    }

    #[test]
    fn datetime_roundtrips_also_nested_in_maps() {
        assert_eq!(hex(&Value::DateTime(1735689600.0)), "c70901cb41d9dd2160000000");
        roundtrip(Value::DateTime(1749990600.123456));
        roundtrip(Value::Map(vec![
            (Value::from("ts"), Value::DateTime(1704067200.0)),
            (Value::from("inner"), Value::Map(vec![(Value::from("at"), Value::DateTime(-1.5))])),
        ]));
    }

    #[test]
    fn datetime_payload_int_is_accepted() {
        // ext 1 with payload packb(5) decodes like Python's fromtimestamp(5).
        assert_eq!(decode(&[0xd4, 0x01, 0x05]).unwrap(), Value::DateTime(5.0));
        assert_eq!(decode(&[0xd4, 0x01, 0xc0]), Err(ValueError::InvalidDateTime));
    }

    #[test]
    fn unknown_ext_code_decodes_to_opaque_ext() {
        let bytes = [0xd5, 0x2a, 0x01, 0x02];
        let v = decode(&bytes).unwrap();
        assert_eq!(v, Value::Ext(42, vec![1, 2]));
        assert_eq!(encode(&v).unwrap(), bytes);
        roundtrip(Value::Ext(-1, vec![0; 12]));
        roundtrip(Value::Ext(7, vec![9; 3]));
    }

    #[test]
    fn scalars_and_containers_roundtrip() {
        roundtrip(Value::Nil);
        roundtrip(Value::Bool(true));
        roundtrip(Value::Bool(false));
        roundtrip(Value::Int(-5));
        roundtrip(Value::Float(0.1));
        roundtrip(Value::Float(f64::NAN));
        roundtrip(Value::Float(-0.0));
        roundtrip(Value::Str("héllo✓".into()));
        roundtrip(Value::Str("x".repeat(70000)));
        roundtrip(Value::Bin(vec![0, 255, 3]));
        roundtrip(Value::Bin(vec![7; 300]));
        roundtrip(Value::Array((0..20).map(Value::Int).collect()));
        roundtrip(Value::Map((0..20).map(|i| (Value::Str(format!("k{i}")), Value::Int(i))).collect()));
        roundtrip(Value::Map(vec![(Value::Bin(vec![1]), Value::Nil)]));
    }

    #[test]
    fn float32_input_widens_to_float() {
        assert_eq!(decode(&[0xca, 0x3f, 0xc0, 0x00, 0x00]).unwrap(), Value::Float(1.5));
    }

    #[test]
    fn strict_decoding_errors() {
        assert_eq!(decode(&[]), Err(ValueError::UnexpectedEof(0)));
        assert_eq!(decode(&[0xc0, 0xc0]), Err(ValueError::TrailingBytes(1)));
        assert!(matches!(decode(&[0xc1]), Err(ValueError::InvalidMarker { marker: 0xc1, .. })));
        assert!(matches!(decode(&[0xa2, 0xff, 0xfe]), Err(ValueError::InvalidUtf8(_))));
        assert_eq!(decode(&[0x81, 0x01, 0x02]), Err(ValueError::InvalidMapKey("int")));
        assert_eq!(decode(&[0x81, 0xc0, 0x02]), Err(ValueError::InvalidMapKey("none")));
        assert!(matches!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Err(ValueError::UnexpectedEof(_))));
        assert!(matches!(decode(&[0xcd, 0x01]), Err(ValueError::UnexpectedEof(_))));
        let deep = [vec![0x91; 200], vec![0xc0]].concat();
        assert_eq!(decode(&deep), Err(ValueError::TooDeep(MAX_DEPTH)));
    }

    #[test]
    fn duplicate_map_keys_collapse_like_a_python_dict() {
        // {"a":1,"b":2,"a":3} -> {"a":3,"b":2}
        let bytes = [0x83, 0xa1, b'a', 0x01, 0xa1, b'b', 0x02, 0xa1, b'a', 0x03];
        assert_eq!(
            decode(&bytes).unwrap(),
            Value::Map(vec![(Value::from("a"), Value::Int(3)), (Value::from("b"), Value::Int(2)),])
        );
    }

    #[test]
    fn json_conversion_keeps_order_and_int_float_distinction() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":1.0,"c":[true,null,"s"],"big":18446744073709551615}"#).unwrap();
        let v = Value::from(&json);
        assert_eq!(
            v,
            Value::Map(vec![
                (Value::from("b"), Value::Int(1)),
                (Value::from("a"), Value::Float(1.0)),
                (Value::from("c"), Value::Array(vec![Value::Bool(true), Value::Nil, Value::from("s")])),
                (Value::from("big"), Value::Int(u64::MAX as i128)),
            ])
        );
        assert_eq!(hex(&v)[..2].to_owned(), "84");
        assert_eq!(v.to_json().unwrap(), json);
        assert_eq!(
            serde_json::to_string(&v.to_json().unwrap()).unwrap(),
            r#"{"b":1,"a":1.0,"c":[true,null,"s"],"big":18446744073709551615}"#
        );
    }

    #[test]
    fn strict_json_rejects_non_json_values() {
        assert_eq!(Value::Bin(vec![1]).to_json(), Err(ValueError::NotJson("bytes")));
        assert_eq!(Value::Float(f64::INFINITY).to_json(), Err(ValueError::NotJson("float")));
        assert_eq!(Value::DateTime(1.0).to_json(), Err(ValueError::NotJson("datetime")));
    }

    #[test]
    fn dump_json_renders_special_values() {
        let v = Value::Map(vec![
            (Value::from("b"), Value::Bin(vec![0xde, 0xad])),
            (Value::from("t"), Value::DateTime(1.5)),
            (Value::from("n"), Value::Float(f64::NAN)),
            (Value::from("i"), Value::Float(f64::INFINITY)),
            (Value::from("m"), Value::Float(f64::NEG_INFINITY)),
            (Value::from("f"), Value::Float(2.0)),
            (Value::from("e"), Value::Ext(5, vec![1])),
        ]);
        assert_eq!(
            serde_json::to_string(&v.to_dump_json()).unwrap(),
            r#"{"b":{"bytes":"dead"},"t":{"datetime":1.5},"n":"NaN","i":"Infinity","m":"-Infinity","f":2.0,"e":{"ext":5,"bytes":"01"}}"#
        );
        let bin_keys = Value::Map(vec![(Value::Bin(vec![1]), Value::Int(2))]);
        assert_eq!(serde_json::to_string(&bin_keys.to_dump_json()).unwrap(), r#"{"map":[[{"bytes":"01"},2]]}"#);
    }

    #[test]
    fn accessors() {
        let v = Value::Map(vec![(Value::from("k"), Value::Int(3))]);
        assert_eq!(v.get("k").and_then(Value::as_i64), Some(3));
        assert_eq!(v.get("k").and_then(Value::as_f64), Some(3.0));
        assert_eq!(v.get("x"), None);
    }
}
