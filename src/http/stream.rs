//! The binary streaming codec of the streaming routes (Aim's "tree streaming", spec §3), and its decoder.
//!
//! A stream is a concatenation of records `u32 LE key length, key, u32 LE value length, value`
//! (§3.1). A key is the path from the root to one leaf, each component followed by `0xFE`; an integer
//! component is `0xFE`, its big-endian int64, `0xFE` (§3.2). A value is a type byte and a payload
//! (§3.3). Trees are flattened depth-first: scalars give one record, an empty dict gives an object
//! marker, a non-empty dict gives no record of its own, a list gives an array marker followed by its
//! elements (§3.4). The UI folds the records back into one result per top-level key (§3.5).
//!
//! Everything here is pure: [`StreamEncoder`] appends the records of one top-level object at a time
//! to a buffer that a handler flushes when it likes; [`decode_objects`] folds a complete body back
//! into `(top-level key, tree)` pairs with the same algorithm as the UI's `parseStream`
//! (`decodePathsVals` followed by `iterFoldTree(…, level = 1)`), and fails where the UI would throw
//! or hang.

use std::fmt;

/// The byte that ends every path component and opens an integer component.
pub const PATH_SENTINEL: u8 = 0xFE;

/// Value type byte: None / null.
pub const TYPE_NONE: u8 = 0;
/// Value type byte: bool, one payload byte.
pub const TYPE_BOOL: u8 = 1;
/// Value type byte: int, eight bytes little-endian signed.
pub const TYPE_INT: u8 = 2;
/// Value type byte: float, eight bytes little-endian IEEE-754 double.
pub const TYPE_FLOAT: u8 = 3;
/// Value type byte: UTF-8 string.
pub const TYPE_STRING: u8 = 4;
/// Value type byte: raw bytes.
pub const TYPE_BYTES: u8 = 5;
/// Value type byte: "the node at this path is an array", no payload.
pub const TYPE_ARRAY: u8 = 6;
/// Value type byte: "the node at this path is an empty object", no payload.
pub const TYPE_OBJECT: u8 = 7;

/// The prefix of top-level keys that the UI treats as progress frames (§3.5, §3.6).
pub const PROGRESS_PREFIX: &str = "progress";

/// One path component: a dict key or a list index.
///
/// Integer keys (list indices, log steps) are encoded as signed big-endian int64, as the reference
/// packs them; the UI reads them as unsigned, which only matters for negative keys, and those never
/// occur in the reference's streams.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A string key, encoded as its UTF-8 bytes.
    Str(String),
    /// An integer key, encoded as `0xFE` + big-endian int64.
    Int(i64),
}

impl Key {
    /// Returns the string if the key is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(s) => Some(s),
            Key::Int(_) => None,
        }
    }

    /// Tells whether the UI would treat a top-level object under this key as a progress frame.
    pub fn is_progress(&self) -> bool {
        self.as_str().is_some_and(|s| s.starts_with(PROGRESS_PREFIX))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Str(s) => f.write_str(s),
            Key::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.to_owned())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s)
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key::Str(s.clone())
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Key::Int(i)
    }
}

/// A float64 series sent as the reference's "numpy" object (§3.7):
/// `{"type": "numpy", "shape": N, "dtype": "float64", "blob": <N little-endian doubles>}`.
///
/// The blob is kept encoded so that stored raw distribution bytes pass through unchanged
/// ([`Float64Array::from_raw_parts`]); `shape` is whatever the producer says (the reference sends
/// `bin_count` for distributions), the UI ignores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Float64Array {
    shape: i64,
    blob: Vec<u8>,
}

impl Float64Array {
    /// Creates an empty series (`shape` 0, empty blob).
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates the object for `values`, packed as little-endian doubles with `shape` = their count.
    pub fn from_values(values: &[f64]) -> Self {
        values.iter().copied().collect()
    }

    /// Creates the object from an already packed blob and an explicit shape, passed through as is.
    pub fn from_raw_parts(shape: i64, blob: Vec<u8>) -> Self {
        Self { shape, blob }
    }

    /// Appends one value, growing `shape` by one.
    pub fn push(&mut self, value: f64) {
        self.blob.extend_from_slice(&value.to_le_bytes());
        self.shape += 1;
    }

    /// Returns the shape sent on the wire.
    pub fn shape(&self) -> i64 {
        self.shape
    }

    /// Returns the packed blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// Returns the values as the UI reads them: the blob reinterpreted as float64, a trailing
    /// partial double ignored (the UI's `Float64Array` constructor would throw on one).
    pub fn values(&self) -> Vec<f64> {
        self.blob
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }

    /// Recognises a decoded numpy object: a dict holding a bytes `blob`, and an int `shape`
    /// (absent or non-int shapes read as the blob's length in doubles). `type` and `dtype` are
    /// not checked, as the UI does not read them.
    pub fn from_decoded(value: &StreamValue) -> Option<Self> {
        let StreamValue::Bytes(blob) = value.get("blob")? else {
            return None;
        };
        let shape = match value.get("shape") {
            Some(StreamValue::Int(n)) => *n,
            _ => i64::try_from(blob.len() / 8).unwrap_or(i64::MAX),
        };
        Some(Self { shape, blob: blob.clone() })
    }

    /// Returns the dict the object is sent as, in the reference's key order.
    pub fn to_dict(&self) -> StreamValue {
        StreamValue::Dict(vec![
            (Key::from("type"), StreamValue::from("numpy")),
            (Key::from("shape"), StreamValue::Int(self.shape)),
            (Key::from("dtype"), StreamValue::from("float64")),
            (Key::from("blob"), StreamValue::Bytes(self.blob.clone())),
        ])
    }
}

impl FromIterator<f64> for Float64Array {
    fn from_iter<I: IntoIterator<Item = f64>>(iter: I) -> Self {
        let mut array = Self::new();
        for v in iter {
            array.push(v);
        }
        array
    }
}

/// A tree to stream, as the reference's Python objects would be.
///
/// Dicts keep insertion order and may have string or integer keys; duplicate keys are not
/// rejected but are encoded twice (a Python dict cannot hold them). Equality compares floats by bit
/// pattern, so NaN equals itself and `0.0` differs from `-0.0`, as their encodings do.
#[derive(Debug, Clone)]
pub enum StreamValue {
    /// Python None, type 0.
    None,
    /// A bool, type 1.
    Bool(bool),
    /// An int64, type 2.
    Int(i64),
    /// A float64, type 3; NaN and infinities are sent as their IEEE-754 bits.
    Float(f64),
    /// A string, type 4.
    Str(String),
    /// Raw bytes, type 5.
    Bytes(Vec<u8>),
    /// A list or tuple: an array marker, then the elements under their indices.
    List(Vec<StreamValue>),
    /// A dict in insertion order: an object marker when empty, else only its entries.
    Dict(Vec<(Key, StreamValue)>),
    /// A float64 series, sent as the numpy dict of §3.7.
    Numpy(Float64Array),
}

impl PartialEq for StreamValue {
    fn eq(&self, other: &Self) -> bool {
        use StreamValue as V;
        match (self, other) {
            (V::None, V::None) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::Float(a), V::Float(b)) => a.to_bits() == b.to_bits(),
            (V::Str(a), V::Str(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::List(a), V::List(b)) => a == b,
            (V::Dict(a), V::Dict(b)) => a == b,
            (V::Numpy(a), V::Numpy(b)) => a == b,
            _ => false,
        }
    }
}

impl StreamValue {
    /// Creates a dict from `(key, value)` pairs, in their order.
    pub fn dict<K: Into<Key>, V: Into<StreamValue>>(entries: impl IntoIterator<Item = (K, V)>) -> Self {
        StreamValue::Dict(entries.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Creates a list from values.
    pub fn list<V: Into<StreamValue>>(items: impl IntoIterator<Item = V>) -> Self {
        StreamValue::List(items.into_iter().map(Into::into).collect())
    }

    /// Returns the value under the string key `key` of a dict (the last one if repeated).
    pub fn get(&self, key: &str) -> Option<&StreamValue> {
        match self {
            StreamValue::Dict(entries) => entries.iter().rev().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Returns the tree as the wire carries it: every [`StreamValue::Numpy`] replaced by its dict.
    /// Decoding an encoded tree gives back exactly this.
    pub fn lowered(&self) -> StreamValue {
        match self {
            StreamValue::List(items) => StreamValue::List(items.iter().map(StreamValue::lowered).collect()),
            StreamValue::Dict(entries) => {
                StreamValue::Dict(entries.iter().map(|(k, v)| (k.clone(), v.lowered())).collect())
            }
            StreamValue::Numpy(array) => array.to_dict(),
            other => other.clone(),
        }
    }

    /// Converts a stored msgpack value (attribute trees, contexts) into a tree to stream.
    ///
    /// Fails on what the reference's encoder cannot send either: integers outside int64 (Python's
    /// `struct.pack("<q")` raises), datetimes and unknown ext values (the reference would send
    /// their Python `repr`, which callers must render themselves), and map keys that are neither
    /// strings nor int64 integers.
    pub fn from_storage(value: &crate::storage::value::Value) -> Result<Self, ConvertError> {
        use crate::storage::value::Value as S;
        Ok(match value {
            S::Nil => StreamValue::None,
            S::Bool(b) => StreamValue::Bool(*b),
            S::Int(i) => StreamValue::Int(i64::try_from(*i).map_err(|_| ConvertError::IntOutOfRange(*i))?),
            S::Float(f) => StreamValue::Float(*f),
            S::Str(s) => StreamValue::Str(s.clone()),
            S::Bin(b) => StreamValue::Bytes(b.clone()),
            S::Array(items) => StreamValue::List(items.iter().map(Self::from_storage).collect::<Result<_, _>>()?),
            S::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let key = match k {
                        S::Str(s) => Key::Str(s.clone()),
                        S::Int(i) => Key::Int(i64::try_from(*i).map_err(|_| ConvertError::IntOutOfRange(*i))?),
                        other => return Err(ConvertError::UnsupportedKey(other.type_name())),
                    };
                    out.push((key, Self::from_storage(v)?));
                }
                StreamValue::Dict(out)
            }
            S::DateTime(_) | S::Ext(_, _) => return Err(ConvertError::Unsupported(value.type_name())),
        })
    }
}

impl From<bool> for StreamValue {
    fn from(b: bool) -> Self {
        StreamValue::Bool(b)
    }
}

impl From<i64> for StreamValue {
    fn from(i: i64) -> Self {
        StreamValue::Int(i)
    }
}

impl From<f64> for StreamValue {
    fn from(f: f64) -> Self {
        StreamValue::Float(f)
    }
}

impl From<&str> for StreamValue {
    fn from(s: &str) -> Self {
        StreamValue::Str(s.to_owned())
    }
}

impl From<String> for StreamValue {
    fn from(s: String) -> Self {
        StreamValue::Str(s)
    }
}

impl From<Float64Array> for StreamValue {
    fn from(a: Float64Array) -> Self {
        StreamValue::Numpy(a)
    }
}

impl<T: Into<StreamValue>> From<Option<T>> for StreamValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(StreamValue::None, Into::into)
    }
}

impl From<serde_json::Value> for StreamValue {
    /// Converts JSON as Python's `json.loads` would type it: integral numbers become ints, others
    /// floats; an unsigned number beyond int64 becomes a float (Python would fail to pack it).
    fn from(v: serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Null => StreamValue::None,
            J::Bool(b) => StreamValue::Bool(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => StreamValue::Int(i),
                None => StreamValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => StreamValue::Str(s),
            J::Array(items) => StreamValue::List(items.into_iter().map(StreamValue::from).collect()),
            J::Object(map) => {
                StreamValue::Dict(map.into_iter().map(|(k, v)| (Key::Str(k), StreamValue::from(v))).collect())
            }
        }
    }
}

impl From<&serde_json::Value> for StreamValue {
    fn from(v: &serde_json::Value) -> Self {
        StreamValue::from(v.clone())
    }
}

/// Why a stored value cannot be streamed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An integer outside int64.
    #[error("integer {0} does not fit int64")]
    IntOutOfRange(i128),
    /// A value type with no codec form (datetime, ext).
    #[error("value of type {0} has no stream encoding")]
    Unsupported(&'static str),
    /// A map key that is neither a string nor an integer.
    #[error("map key of type {0} has no stream encoding")]
    UnsupportedKey(&'static str),
}

/// Why a record could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A key or value longer than the u32 length prefix can say (Python's `struct.pack("<I")`
    /// raises there too).
    #[error("stream record part of {0} bytes exceeds the u32 length prefix")]
    TooLong(usize),
}

/// Appends one path component to an encoded path.
pub fn push_key(path: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Str(s) => path.extend_from_slice(s.as_bytes()),
        Key::Int(i) => {
            path.push(PATH_SENTINEL);
            path.extend_from_slice(&i.to_be_bytes());
        }
    }
    path.push(PATH_SENTINEL);
}

/// Returns the encoded path of `keys` (the empty byte string for the root).
pub fn encode_path(keys: &[Key]) -> Vec<u8> {
    let mut path = Vec::new();
    for key in keys {
        push_key(&mut path, key);
    }
    path
}

/// Appends the records of a whole tree to a buffer, one top-level object at a time.
///
/// Each call to [`StreamEncoder::object`] writes the records of one top-level key contiguously
/// (§3.5 rule 1); progress frames written with [`StreamEncoder::progress`] therefore always sit
/// between objects. Writing the same top-level key twice in a row makes the UI merge both into one
/// result; with anything in between, it yields two results. The buffer can be taken at any time
/// ([`StreamEncoder::take`]) and flushed as one HTTP chunk; record boundaries need not match
/// chunk boundaries.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    buf: Vec<u8>,
    path: Vec<u8>,
    next_progress: u64,
    records: u64,
}

impl StreamEncoder {
    /// Creates an encoder with an empty buffer and the progress counter at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the records of `value` under the top-level key `key`.
    ///
    /// On error nothing is appended: the buffer is cut back to where it was, so the stream stays
    /// well formed.
    pub fn object(&mut self, key: impl Into<Key>, value: &StreamValue) -> Result<(), EncodeError> {
        self.at(&[key.into()], value)
    }

    /// Appends the records of `value` under `prefix` (the empty prefix encodes `value` as the whole
    /// root, as the per-run custom-object batch routes do with their trace view).
    ///
    /// A root value that is an empty dict gives one record with an empty key and the object marker,
    /// as the reference's `unfold_tree` does. On error nothing is appended.
    pub fn at(&mut self, prefix: &[Key], value: &StreamValue) -> Result<(), EncodeError> {
        let (start, records) = (self.buf.len(), self.records);
        self.path.clear();
        for key in prefix {
            push_key(&mut self.path, key);
        }
        let mut path = std::mem::take(&mut self.path);
        let result = self.unfold(&mut path, value);
        self.path = path;
        if result.is_err() {
            self.buf.truncate(start);
            self.records = records;
        }
        result
    }

    /// Appends the progress frame `progress_<n> = [checked, total]`, `n` counting the frames of
    /// this encoder from 0 (§3.6).
    pub fn progress(&mut self, checked: i64, total: i64) {
        let n = self.next_progress;
        self.next_progress += 1;
        let key = Key::Str(format!("{PROGRESS_PREFIX}_{n}"));
        // Two ints cannot exceed the u32 length prefix.
        let _ = self.object(key, &StreamValue::List(vec![StreamValue::Int(checked), StreamValue::Int(total)]));
    }

    /// Appends the terminal progress frame `[0, 0]`.
    pub fn progress_done(&mut self) {
        self.progress(0, 0);
    }

    /// Returns the number of progress frames written so far (the next frame's `n`).
    pub fn progress_count(&self) -> u64 {
        self.next_progress
    }

    /// Returns the number of records written so far, including taken ones.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    /// Returns the bytes not yet taken.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Returns the number of bytes not yet taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Tells whether there are no bytes waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the bytes written since the last take, leaving the counters as they are.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Consumes the encoder and returns the bytes not yet taken.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Writes `value`'s records under the encoded path `path`, restoring `path` afterwards.
    fn unfold(&mut self, path: &mut Vec<u8>, value: &StreamValue) -> Result<(), EncodeError> {
        match value {
            StreamValue::None => self.record(path, TYPE_NONE, &[]),
            StreamValue::Bool(b) => self.record(path, TYPE_BOOL, &[u8::from(*b)]),
            StreamValue::Int(i) => self.record(path, TYPE_INT, &i.to_le_bytes()),
            StreamValue::Float(f) => self.record(path, TYPE_FLOAT, &f.to_le_bytes()),
            StreamValue::Str(s) => self.record(path, TYPE_STRING, s.as_bytes()),
            StreamValue::Bytes(b) => self.record(path, TYPE_BYTES, b),
            StreamValue::List(items) => {
                self.record(path, TYPE_ARRAY, &[])?;
                for (index, item) in items.iter().enumerate() {
                    let index = i64::try_from(index).unwrap_or(i64::MAX);
                    self.child(path, &Key::Int(index), item)?;
                }
                Ok(())
            }
            StreamValue::Dict(entries) => {
                if entries.is_empty() {
                    return self.record(path, TYPE_OBJECT, &[]);
                }
                for (key, item) in entries {
                    self.child(path, key, item)?;
                }
                Ok(())
            }
            StreamValue::Numpy(array) => {
                self.child(path, &Key::from("type"), &StreamValue::from("numpy"))?;
                self.child(path, &Key::from("shape"), &StreamValue::Int(array.shape))?;
                self.child(path, &Key::from("dtype"), &StreamValue::from("float64"))?;
                let mark = path.len();
                push_key(path, &Key::from("blob"));
                let result = self.record(path, TYPE_BYTES, &array.blob);
                path.truncate(mark);
                result
            }
        }
    }

    fn child(&mut self, path: &mut Vec<u8>, key: &Key, value: &StreamValue) -> Result<(), EncodeError> {
        let mark = path.len();
        push_key(path, key);
        let result = self.unfold(path, value);
        path.truncate(mark);
        result
    }

    fn record(&mut self, path: &[u8], type_byte: u8, payload: &[u8]) -> Result<(), EncodeError> {
        let key_len = u32::try_from(path.len()).map_err(|_| EncodeError::TooLong(path.len()))?;
        let value_len = u32::try_from(payload.len() + 1).map_err(|_| EncodeError::TooLong(payload.len() + 1))?;
        self.buf.reserve(9 + path.len() + payload.len());
        self.buf.extend_from_slice(&key_len.to_le_bytes());
        self.buf.extend_from_slice(path);
        self.buf.extend_from_slice(&value_len.to_le_bytes());
        self.buf.push(type_byte);
        self.buf.extend_from_slice(payload);
        self.records += 1;
        Ok(())
    }
}

/// Returns the bytes of the top-level object `key: value`.
pub fn encode_object(key: impl Into<Key>, value: &StreamValue) -> Result<Vec<u8>, EncodeError> {
    let mut encoder = StreamEncoder::new();
    encoder.object(key, value)?;
    Ok(encoder.finish())
}

/// Returns the bytes of the progress frame `progress_<n> = [checked, total]`.
pub fn progress_frame(n: u64, checked: i64, total: i64) -> Vec<u8> {
    let mut encoder = StreamEncoder { next_progress: n, ..StreamEncoder::default() };
    encoder.progress(checked, total);
    encoder.finish()
}

/// A decoded record value: a leaf or a container marker.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    /// Type 0.
    None,
    /// Type 1.
    Bool(bool),
    /// Type 2 (8-, 4- or 2-byte payloads, as the UI accepts).
    Int(i64),
    /// Type 3 (8-, 4- or 2-byte payloads, as the UI accepts).
    Float(f64),
    /// Type 4.
    Str(String),
    /// Type 5.
    Bytes(Vec<u8>),
    /// Type 6, the array marker.
    Array,
    /// Type 7, the object marker.
    Object,
}

impl Leaf {
    fn into_node(self) -> StreamValue {
        match self {
            Leaf::None => StreamValue::None,
            Leaf::Bool(b) => StreamValue::Bool(b),
            Leaf::Int(i) => StreamValue::Int(i),
            Leaf::Float(f) => StreamValue::Float(f),
            Leaf::Str(s) => StreamValue::Str(s),
            Leaf::Bytes(b) => StreamValue::Bytes(b),
            Leaf::Array => StreamValue::List(Vec::new()),
            Leaf::Object => StreamValue::Dict(Vec::new()),
        }
    }
}

/// Why a stream could not be decoded or folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ends inside a record (the UI throws "Corrupted stream" for a truncated part and
    /// silently drops a truncated length prefix; this decoder rejects both).
    #[error("stream truncated at byte {0}")]
    Truncated(usize),
    /// A path component is malformed (unterminated string, short integer, missing sentinel).
    #[error("malformed path in the record at byte {0}")]
    BadPath(usize),
    /// A string key or value is not UTF-8 (the UI would substitute U+FFFD).
    #[error("invalid utf-8 in the record at byte {0}")]
    InvalidUtf8(usize),
    /// A value has an unknown type byte or a payload of the wrong length for its type.
    #[error("bad value (type {type_byte:?}, {len} payload bytes) in the record at byte {offset}")]
    BadValue { type_byte: Option<u8>, len: usize, offset: usize },
    /// The records do not describe a tree the UI can fold (it would throw or loop forever).
    #[error("cannot fold the record at byte {offset}: {reason}")]
    Fold { offset: usize, reason: &'static str },
}

/// One decoded record: its path, its value and its offset in the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The path components.
    pub path: Vec<Key>,
    /// The value or marker.
    pub value: Leaf,
    /// The offset of the record's first byte in the body.
    pub offset: usize,
}

/// Splits a complete body into records (§3.1–§3.3).
pub fn decode_records(body: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let offset = pos;
        let key = take_part(body, &mut pos, offset)?;
        let value = take_part(body, &mut pos, offset)?;
        records.push(Record { path: decode_path(key, offset)?, value: decode_leaf(value, offset)?, offset });
    }
    Ok(records)
}

fn take_part<'a>(body: &'a [u8], pos: &mut usize, offset: usize) -> Result<&'a [u8], DecodeError> {
    let len_bytes = body.get(*pos..*pos + 4).ok_or(DecodeError::Truncated(offset))?;
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    let start = *pos + 4;
    let part = body.get(start..start + len).ok_or(DecodeError::Truncated(offset))?;
    *pos = start + len;
    Ok(part)
}

/// Decodes an encoded path (§3.2). A component that starts with `0xFE` is an integer, so an
/// empty string key (encoded as a lone `0xFE`) cannot be read back, by this decoder or the UI's.
pub fn decode_path(bytes: &[u8], offset: usize) -> Result<Vec<Key>, DecodeError> {
    let mut path = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos] == PATH_SENTINEL {
            let int = bytes.get(pos + 1..pos + 9).ok_or(DecodeError::BadPath(offset))?;
            if bytes.get(pos + 9) != Some(&PATH_SENTINEL) {
                return Err(DecodeError::BadPath(offset));
            }
            path.push(Key::Int(i64::from_be_bytes([int[0], int[1], int[2], int[3], int[4], int[5], int[6], int[7]])));
            pos += 10;
        } else {
            let len = bytes[pos..].iter().position(|&b| b == PATH_SENTINEL).ok_or(DecodeError::BadPath(offset))?;
            let s = std::str::from_utf8(&bytes[pos..pos + len]).map_err(|_| DecodeError::InvalidUtf8(offset))?;
            path.push(Key::Str(s.to_owned()));
            pos += len + 1;
        }
    }
    Ok(path)
}

/// Decodes an encoded value (§3.3), accepting the 4- and 2-byte ints and floats the UI accepts.
pub fn decode_leaf(bytes: &[u8], offset: usize) -> Result<Leaf, DecodeError> {
    let bad =
        || DecodeError::BadValue { type_byte: bytes.first().copied(), len: bytes.len().saturating_sub(1), offset };
    let (&type_byte, payload) = bytes.split_first().ok_or_else(bad)?;
    Ok(match (type_byte, payload.len()) {
        (TYPE_NONE, 0) => Leaf::None,
        (TYPE_BOOL, 1) => Leaf::Bool(payload[0] != 0),
        (TYPE_INT, 8) => Leaf::Int(i64::from_le_bytes(array8(payload))),
        (TYPE_INT, 4) => Leaf::Int(i64::from(i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]))),
        (TYPE_INT, 2) => Leaf::Int(i64::from(i16::from_le_bytes([payload[0], payload[1]]))),
        (TYPE_FLOAT, 8) => Leaf::Float(f64::from_le_bytes(array8(payload))),
        (TYPE_FLOAT, 4) => Leaf::Float(f64::from(f32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]))),
        (TYPE_FLOAT, 2) => Leaf::Float(f16_to_f64(u16::from_le_bytes([payload[0], payload[1]]))),
        (TYPE_STRING, _) => {
            Leaf::Str(std::str::from_utf8(payload).map_err(|_| DecodeError::InvalidUtf8(offset))?.to_owned())
        }
        (TYPE_BYTES, _) => Leaf::Bytes(payload.to_vec()),
        (TYPE_ARRAY, 0) => Leaf::Array,
        (TYPE_OBJECT, 0) => Leaf::Object,
        _ => return Err(bad()),
    })
}

fn array8(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Widens an IEEE-754 half (Python's `struct` format `e`).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// Folds records into one `(top-level key, tree)` per run of records sharing their first path
/// component, exactly as the UI's `decodePathsVals` + `iterFoldTree(level = 1)` do (§3.5):
///
/// - before the first record, a root object is implied unless that record has the empty path;
/// - for each record, the open path is cut back to the longest common prefix with the record's
///   path, every missing intermediate node is created as an empty **object**, then the record's
///   node (a scalar, `[]` for the array marker, `{}` for the object marker) is set under its last
///   component; a node cut back at depth 1 is a finished result;
/// - under an array, the index must not be lower than the array's length, and missing indices are
///   padded with `null`; under a dict, an existing key is overwritten in place.
///
/// A top-level key whose records are not contiguous is yielded once per run. Where the UI throws
/// (a repeated path, a path that returns to an ancestor, a child under a scalar) or loops forever
/// (a string key or an earlier index under an array) this returns [`DecodeError::Fold`]. Integer
/// and string keys stay distinct, where a JS object would merge `5` and `"5"`.
pub fn fold(records: Vec<Record>) -> Result<Vec<(Key, StreamValue)>, DecodeError> {
    let mut results = Vec::new();
    let mut records = records.into_iter().peekable();
    let Some(first) = records.peek() else {
        return Ok(results);
    };
    // The stack holds the open nodes; stack[i] sits at path[..i]. The root is stack[0].
    let mut stack: Vec<StreamValue> = Vec::new();
    let mut path: Vec<Key> = Vec::new();
    if first.path.is_empty() {
        if let Some(first) = records.next() {
            stack.push(first.value.into_node());
        }
    } else {
        stack.push(StreamValue::Dict(Vec::new()));
    }
    for record in records {
        let offset = record.offset;
        let common = path.iter().zip(&record.path).take_while(|(a, b)| a == b).count();
        while path.len() > common {
            close_top(&mut stack, &mut path, &mut results, offset)?;
        }
        if record.path.len() == path.len() {
            return Err(DecodeError::Fold { offset, reason: "a path repeats or returns to an ancestor" });
        }
        let last = record.path.len() - 1;
        for key in &record.path[path.len()..last] {
            open_child(&mut stack, &mut path, key.clone(), StreamValue::Dict(Vec::new()), offset)?;
        }
        open_child(&mut stack, &mut path, record.path[last].clone(), record.value.into_node(), offset)?;
    }
    while !path.is_empty() {
        close_top(&mut stack, &mut path, &mut results, usize::MAX)?;
    }
    Ok(results)
}

/// Checks that `key` can go under the open top node, then opens `node` there.
fn open_child(
    stack: &mut Vec<StreamValue>,
    path: &mut Vec<Key>,
    key: Key,
    node: StreamValue,
    offset: usize,
) -> Result<(), DecodeError> {
    let parent = stack.last_mut().ok_or(DecodeError::Fold { offset, reason: "no open node" })?;
    match parent {
        StreamValue::List(items) => {
            let Key::Int(index) = key else {
                return Err(DecodeError::Fold { offset, reason: "a string key under an array" });
            };
            let index = usize::try_from(index)
                .map_err(|_| DecodeError::Fold { offset, reason: "a negative index under an array" })?;
            if index < items.len() {
                return Err(DecodeError::Fold { offset, reason: "an array index lower than the array's length" });
            }
            // The UI pads with nulls one by one; refuse absurd gaps instead of exhausting memory.
            if index - items.len() > 1 << 24 {
                return Err(DecodeError::Fold { offset, reason: "an array index far beyond the array's length" });
            }
            items.resize(index, StreamValue::None);
        }
        StreamValue::Dict(_) => {}
        _ => return Err(DecodeError::Fold { offset, reason: "a child under a scalar" }),
    }
    path.push(key);
    stack.push(node);
    Ok(())
}

/// Closes the deepest open node: attaches it to its parent, or yields it when it is top-level.
fn close_top(
    stack: &mut Vec<StreamValue>,
    path: &mut Vec<Key>,
    results: &mut Vec<(Key, StreamValue)>,
    offset: usize,
) -> Result<(), DecodeError> {
    let (Some(node), Some(key)) = (stack.pop(), path.pop()) else {
        return Err(DecodeError::Fold { offset, reason: "no open node" });
    };
    if stack.len() == 1 {
        // A finished top-level object. The root keeps a placeholder so that array padding stays
        // right for a root announced as an array.
        attach(&mut stack[0], key.clone(), StreamValue::None, true);
        results.push((key, node));
    } else if let Some(parent) = stack.last_mut() {
        attach(parent, key, node, false);
    }
    Ok(())
}

fn attach(parent: &mut StreamValue, key: Key, node: StreamValue, is_root: bool) {
    match parent {
        StreamValue::List(items) => items.push(node),
        // The root dict is never read back: skip the linear key search.
        StreamValue::Dict(_) if is_root => {}
        StreamValue::Dict(entries) => match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = node,
            None => entries.push((key, node)),
        },
        _ => {}
    }
}

/// Decodes a complete body into its top-level objects, in stream order, progress frames included
/// (see [`Key::is_progress`] and [`progress_of`]).
pub fn decode_objects(body: &[u8]) -> Result<Vec<(Key, StreamValue)>, DecodeError> {
    fold(decode_records(body)?)
}

/// Returns `(checked, total)` if `(key, value)` is a progress frame as the UI reads it: a key
/// starting with `progress` whose value holds ints at indices 0 and 1.
pub fn progress_of(key: &Key, value: &StreamValue) -> Option<(i64, i64)> {
    if !key.is_progress() {
        return None;
    }
    match value {
        StreamValue::List(items) => match (items.first(), items.get(1)) {
            (Some(StreamValue::Int(checked)), Some(StreamValue::Int(total))) => Some((*checked, *total)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '|', '\n'], "")).unwrap()
    }

    fn d<const N: usize>(entries: [(&str, StreamValue); N]) -> StreamValue {
        StreamValue::dict(entries)
    }

    /// Splits a body into raw (key, value) byte pairs.
    fn raw_records(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < body.len() {
            let k = take_part(body, &mut pos, 0).unwrap().to_vec();
            let v = take_part(body, &mut pos, 0).unwrap().to_vec();
            out.push((k, v));
        }
        out
    }

    #[test]
    fn example_1_progress_frame_matches_byte_for_byte() {
        let expected = hex("0b000000 70726f67726573735f30fe 01000000 06
             15000000 70726f67726573735f30fe fe0000000000000000fe 09000000 020000000000000000
             15000000 70726f67726573735f30fe fe0000000000000001fe 09000000 020200000000000000");
        assert_eq!(expected.len(), 96);
        assert_eq!(progress_frame(0, 0, 2), expected);
        let mut enc = StreamEncoder::new();
        enc.progress(0, 2);
        assert_eq!(enc.buffer(), &expected[..]);
        assert_eq!(enc.record_count(), 3);
        // The same object built by hand encodes alike.
        assert_eq!(encode_object("progress_0", &StreamValue::list([0i64, 2])).unwrap(), expected);
    }

    fn example_2_object() -> StreamValue {
        d([
            ("params", StreamValue::Dict(vec![])),
            (
                "traces",
                d([(
                    "metric",
                    StreamValue::List(vec![d([
                        ("name", "loss".into()),
                        ("values", d([("last", 0.25.into()), ("last_step", 3i64.into())])),
                    ])]),
                )]),
            ),
            ("props", d([("active", true.into()), ("end_time", StreamValue::None)])),
        ])
    }

    #[test]
    fn example_2_run_search_object_matches_byte_for_byte() {
        let body = encode_object("ab12", &example_2_object()).unwrap();
        let records = raw_records(&body);
        let metric = "61623132fe 747261636573fe 6d6574726963fe";
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (hex("61623132fe706172616d73fe"), hex("07")),
            (hex(metric), hex("06")),
            (hex(&format!("{metric} fe0000000000000000fe 6e616d65fe")), hex("046c6f7373")),
            (hex(&format!("{metric} fe0000000000000000fe 76616c756573fe 6c617374fe")), hex("03000000000000d03f")),
            (
                hex(&format!("{metric} fe0000000000000000fe 76616c756573fe 6c6173745f73746570fe")),
                hex("020300000000000000"),
            ),
            (hex("61623132fe 70726f7073fe 616374697665fe"), hex("0101")),
            (hex("61623132fe 70726f7073fe 656e645f74696d65fe"), hex("00")),
        ];
        assert_eq!(records, expected);
        let key_lens: Vec<usize> = records.iter().map(|(k, _)| k.len()).collect();
        assert_eq!(key_lens, [12, 19, 34, 41, 46, 18, 20]);
        assert_eq!(&body[..21], &hex("0c000000 61623132fe706172616d73fe 01000000 07")[..]);
        // The UI's reconstruction.
        let objects = decode_objects(&body).unwrap();
        assert_eq!(objects, vec![(Key::from("ab12"), example_2_object())]);
    }

    #[test]
    fn example_3_numpy_object_and_integer_keys_match_byte_for_byte() {
        let body = encode_object("x", &Float64Array::from_values(&[0.5, -1.0]).into()).unwrap();
        let expected = vec![
            (hex("78fe 74797065fe"), hex("04 6e756d7079")),
            (hex("78fe 7368617065fe"), hex("02 0200000000000000")),
            (hex("78fe 6474797065fe"), hex("04 666c6f61743634")),
            (hex("78fe 626c6f62fe"), hex("05 000000000000e03f 000000000000f0bf")),
        ];
        assert_eq!(raw_records(&body), expected);
        assert_eq!(expected[3].1.len(), 17);
        let objects = decode_objects(&body).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(Float64Array::from_decoded(&objects[0].1).unwrap().values(), vec![0.5, -1.0]);

        let log = encode_object(5i64, &"line five".into()).unwrap();
        assert_eq!(log, hex("0a000000 fe0000000000000005fe 0a000000 04 6c696e652066697665"));
        assert_eq!(decode_objects(&log).unwrap(), vec![(Key::Int(5), "line five".into())]);
    }

    #[test]
    fn primitives_encode_as_the_conformance_suite_says() {
        let value_of = |v: StreamValue| raw_records(&encode_object("k", &v).unwrap())[0].1.clone();
        assert_eq!(value_of(StreamValue::None), [0]);
        assert_eq!(value_of(true.into()), [1, 1]);
        assert_eq!(value_of(false.into()), [1, 0]);
        assert_eq!(value_of(42i64.into()), [&[2u8][..], &42i64.to_le_bytes()].concat());
        assert_eq!(value_of(3.25.into()), [&[3u8][..], &3.25f64.to_le_bytes()].concat());
        assert_eq!(value_of("hello".into()), b"\x04hello");
        assert_eq!(value_of(StreamValue::Bytes(vec![0, 0xfe, 0xff])), [5, 0, 0xfe, 0xff]);
        assert_eq!(value_of(StreamValue::List(vec![])), [6]);
        assert_eq!(value_of(StreamValue::Dict(vec![])), [7]);
        // A two-element list: a marker, then indices 0 and 1.
        let list = raw_records(&encode_object("k", &StreamValue::list(["a", "b"])).unwrap());
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].0, hex("6bfe fe0000000000000000fe"));
        assert_eq!(list[2].0, hex("6bfe fe0000000000000001fe"));
    }

    #[test]
    fn non_finite_and_negative_zero_floats_keep_their_bits() {
        for f in [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE, f64::MAX] {
            let body = encode_object("f", &f.into()).unwrap();
            assert_eq!(raw_records(&body)[0].1[1..], f.to_le_bytes());
            assert_eq!(decode_objects(&body).unwrap(), vec![(Key::from("f"), StreamValue::Float(f))]);
        }
        // Python's struct.pack('<d', float('nan')) is 000000000000f87f.
        assert_eq!(f64::NAN.to_le_bytes(), [0, 0, 0, 0, 0, 0, 0xf8, 0x7f]);
    }

    #[test]
    fn root_level_trees_follow_unfold_tree() {
        let mut enc = StreamEncoder::new();
        enc.at(&[], &StreamValue::Dict(vec![])).unwrap();
        assert_eq!(enc.take(), hex("00000000 01000000 07"));
        enc.at(&[], &StreamValue::Int(1)).unwrap();
        assert_eq!(enc.take(), hex("00000000 09000000 020100000000000000"));
        // A trace view at the root (custom-object get-batch): each field is a top-level result.
        let view = d([("name", "t".into()), ("iters", StreamValue::list([1i64, 2]))]);
        enc.at(&[], &view).unwrap();
        let objects = decode_objects(&enc.take()).unwrap();
        assert_eq!(objects, vec![(Key::from("name"), "t".into()), (Key::from("iters"), StreamValue::list([1i64, 2]))]);
    }

    #[test]
    fn progress_frames_count_per_encoder_and_sit_between_objects() {
        let mut enc = StreamEncoder::new();
        enc.progress(0, 2);
        enc.object("run1", &d([("a", 1i64.into())])).unwrap();
        enc.progress(1, 2);
        let first_chunk = enc.take();
        enc.object("run2", &d([("a", 2i64.into())])).unwrap();
        enc.progress(2, 2);
        enc.progress_done();
        assert_eq!(enc.progress_count(), 4);
        let body = [first_chunk, enc.finish()].concat();
        let objects = decode_objects(&body).unwrap();
        let keys: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["progress_0", "run1", "progress_1", "run2", "progress_2", "progress_3"]);
        let progress: Vec<(i64, i64)> = objects.iter().filter_map(|(k, v)| progress_of(k, v)).collect();
        assert_eq!(progress, [(0, 2), (1, 2), (2, 2), (0, 0)]);
        assert_eq!(progress_frame(3, 0, 0), encode_object("progress_3", &StreamValue::list([0i64, 0])).unwrap());
        assert!(progress_of(&Key::from("run1"), &StreamValue::list([0i64, 0])).is_none());
    }

    #[test]
    fn interleaving_splits_a_top_level_object_and_repeating_it_merges() {
        let a1 = encode_object("a", &d([("x", 1i64.into())])).unwrap();
        let a2 = encode_object("a", &d([("y", 2i64.into())])).unwrap();
        let p = progress_frame(0, 1, 2);
        let split = decode_objects(&[a1.clone(), p, a2.clone()].concat()).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(split[0], (Key::from("a"), d([("x", 1i64.into())])));
        assert_eq!(split[2], (Key::from("a"), d([("y", 2i64.into())])));
        let merged = decode_objects(&[a1, a2].concat()).unwrap();
        assert_eq!(merged, vec![(Key::from("a"), d([("x", 1i64.into()), ("y", 2i64.into())]))]);
    }

    #[test]
    fn nested_containers_round_trip() {
        let tree = d([
            ("empty_dict", StreamValue::Dict(vec![])),
            ("empty_list", StreamValue::List(vec![])),
            ("list_of_empties", StreamValue::List(vec![StreamValue::Dict(vec![]), StreamValue::List(vec![])])),
            ("nested", StreamValue::List(vec![StreamValue::list([1i64]), d([("a", d([("b", StreamValue::None)]))])])),
            ("ints", StreamValue::Dict(vec![(Key::Int(0), "zero".into()), (Key::Int(7), d([]))])),
            ("mixed keys", StreamValue::Dict(vec![(Key::Int(5), 1i64.into()), (Key::from("5"), 2i64.into())])),
            ("ünïcødé ✓ 日本", "значение 🚀".into()),
            ("numpy", Float64Array::from_values(&[]).into()),
            ("blob", StreamValue::Bytes(vec![0xfe; 3])),
            ("floats", StreamValue::list([0.1, -2.5e300, f64::NAN, f64::INFINITY])),
            ("ints_extreme", StreamValue::list([i64::MIN, i64::MAX, -1])),
        ]);
        let body = encode_object(Key::Int(i64::MAX), &tree).unwrap();
        assert_eq!(decode_objects(&body).unwrap(), vec![(Key::Int(i64::MAX), tree.lowered())]);
    }

    #[test]
    fn json_converts_as_python_would_type_it() {
        let json = serde_json::json!({"b": [1, 2.5, "x", null, true, {}], "a": {"big": 18446744073709551615u64}});
        let v = StreamValue::from(&json);
        assert_eq!(
            v,
            d([
                (
                    "b",
                    StreamValue::List(vec![1i64.into(), 2.5.into(), "x".into(), StreamValue::None, true.into(), d([])])
                ),
                ("a", d([("big", StreamValue::Float(u64::MAX as f64))])),
            ])
        );
    }

    #[test]
    fn stored_values_convert_or_fail_like_the_reference() {
        use crate::storage::value::Value as S;
        let stored =
            S::Map(vec![(S::Str("lr".into()), S::Float(0.1)), (S::Str("layers".into()), S::Array(vec![S::Int(64)]))]);
        assert_eq!(
            StreamValue::from_storage(&stored).unwrap(),
            d([("lr", 0.1.into()), ("layers", StreamValue::list([64i64]))])
        );
        assert_eq!(StreamValue::from_storage(&S::Int(1 << 63)), Err(ConvertError::IntOutOfRange(1 << 63)));
        assert!(matches!(StreamValue::from_storage(&S::DateTime(0.0)), Err(ConvertError::Unsupported(_))));
        let bad_key = S::Map(vec![(S::Bin(vec![1]), S::Nil)]);
        assert!(matches!(StreamValue::from_storage(&bad_key), Err(ConvertError::UnsupportedKey(_))));
    }

    #[test]
    fn float64_array_encodes_shape_and_passes_raw_blobs_through() {
        let a: Float64Array = [1.0, 0.75, 0.5].into_iter().collect();
        assert_eq!(a.shape(), 3);
        assert_eq!(a.blob().len(), 24);
        assert_eq!(a.values(), [1.0, 0.75, 0.5]);
        assert_eq!(Float64Array::new().to_dict().get("shape"), Some(&StreamValue::Int(0)));
        let raw = Float64Array::from_raw_parts(2, hex("000000000000f03f 0000000000000040"));
        assert_eq!(raw.values(), [1.0, 2.0]);
        let body = encode_object("d", &raw.clone().into()).unwrap();
        assert_eq!(body, encode_object("d", &raw.to_dict()).unwrap());
        let decoded = decode_objects(&body).unwrap();
        assert_eq!(Float64Array::from_decoded(&decoded[0].1), Some(raw));
    }

    #[test]
    fn decoder_accepts_the_short_forms_the_ui_accepts() {
        assert_eq!(decode_leaf(&hex("02 ffffffff"), 0), Ok(Leaf::Int(-1)));
        assert_eq!(decode_leaf(&hex("02 0500"), 0), Ok(Leaf::Int(5)));
        assert_eq!(decode_leaf(&hex("03 0000803f"), 0), Ok(Leaf::Float(1.0)));
        assert_eq!(decode_leaf(&hex("03 003c"), 0), Ok(Leaf::Float(1.0)));
        assert_eq!(decode_leaf(&hex("03 00c0"), 0), Ok(Leaf::Float(-2.0)));
        assert_eq!(decode_leaf(&hex("03 007c"), 0), Ok(Leaf::Float(f64::INFINITY)));
        assert_eq!(decode_leaf(&hex("03 0100"), 0), Ok(Leaf::Float(2f64.powi(-24))));
        assert!(matches!(decode_leaf(&hex("02 000000"), 0), Err(DecodeError::BadValue { .. })));
        assert!(matches!(decode_leaf(&hex("08"), 0), Err(DecodeError::BadValue { .. })));
        assert!(matches!(decode_leaf(&[], 0), Err(DecodeError::BadValue { .. })));
        assert!(matches!(decode_leaf(&hex("04 ff"), 0), Err(DecodeError::InvalidUtf8(0))));
    }

    #[test]
    fn decoder_rejects_truncated_streams_and_malformed_paths() {
        let body = encode_object("abc", &1i64.into()).unwrap();
        assert_eq!(decode_objects(&[]), Ok(vec![]));
        for cut in 1..body.len() {
            assert_eq!(decode_objects(&body[..cut]), Err(DecodeError::Truncated(0)), "cut at {cut}");
        }
        assert!(matches!(decode_path(b"abc", 0), Err(DecodeError::BadPath(0))));
        assert!(matches!(decode_path(&hex("fe0000"), 0), Err(DecodeError::BadPath(0))));
        assert!(matches!(decode_path(&hex("fe0000000000000001 00"), 0), Err(DecodeError::BadPath(0))));
        // An empty string key is a lone 0xFE, which reads as the start of an integer key.
        assert_eq!(encode_path(&[Key::from("")]), [PATH_SENTINEL]);
        assert!(
            decode_path(&encode_path(&[Key::from(""), Key::from("abcdefgh")]), 0)
                != Ok(vec![Key::from(""), Key::from("abcdefgh")])
        );
    }

    fn record(path: Vec<Key>, value: Leaf) -> Record {
        Record { path, value, offset: 0 }
    }

    #[test]
    fn folding_fails_where_the_ui_throws_or_hangs() {
        let k = |s: &str| Key::from(s);
        let fails = |records: Vec<Record>| matches!(fold(records), Err(DecodeError::Fold { .. }));
        // The same path twice.
        assert!(fails(vec![record(vec![k("a"), k("b")], Leaf::Int(1)), record(vec![k("a"), k("b")], Leaf::Int(2))]));
        // Returning to an ancestor.
        assert!(fails(vec![record(vec![k("a"), k("b")], Leaf::Int(1)), record(vec![k("a")], Leaf::Int(2))]));
        // A child under a scalar.
        assert!(fails(vec![record(vec![k("a")], Leaf::Int(1)), record(vec![k("a"), k("b")], Leaf::Int(2))]));
        // A string key under an array, and an index going backwards.
        assert!(fails(vec![record(vec![k("a")], Leaf::Array), record(vec![k("a"), k("b")], Leaf::Int(2))]));
        assert!(fails(vec![
            record(vec![k("a")], Leaf::Array),
            record(vec![k("a"), Key::Int(1)], Leaf::Int(1)),
            record(vec![k("a"), Key::Int(0)], Leaf::Int(0)),
        ]));
    }

    #[test]
    fn folding_pads_arrays_and_replaces_revisited_subtrees() {
        let k = |s: &str| Key::from(s);
        let padded =
            fold(vec![record(vec![k("a")], Leaf::Array), record(vec![k("a"), Key::Int(2)], Leaf::Str("x".into()))]);
        assert_eq!(
            padded,
            Ok(vec![(k("a"), StreamValue::List(vec![StreamValue::None, StreamValue::None, "x".into()]))])
        );
        // Leaving a/x for a/y and coming back recreates a/x as a fresh object (§3.5 rule 2).
        let revisited = fold(vec![
            record(vec![k("a"), k("x"), k("p")], Leaf::Int(1)),
            record(vec![k("a"), k("y")], Leaf::Int(2)),
            record(vec![k("a"), k("x"), k("q")], Leaf::Int(3)),
        ]);
        assert_eq!(revisited, Ok(vec![(k("a"), d([("x", d([("q", 3i64.into())])), ("y", 2i64.into())]))]));
        // A root announced by an empty-path record yields only its children.
        let rooted = fold(vec![record(vec![], Leaf::Object), record(vec![k("a")], Leaf::Int(1))]);
        assert_eq!(rooted, Ok(vec![(k("a"), 1i64.into())]));
        assert_eq!(fold(vec![record(vec![], Leaf::Int(1))]), Ok(vec![]));
    }

    #[test]
    fn objects_append_after_earlier_bytes() {
        let mut enc = StreamEncoder::new();
        enc.object("a", &1i64.into()).unwrap();
        let before = enc.buffer().to_vec();
        assert_eq!(enc.record_count(), 1);
        assert!(enc.object("b", &StreamValue::Dict(vec![])).is_ok());
        assert_eq!(&enc.buffer()[..before.len()], &before[..]);
        assert_eq!(enc.len(), before.len() + 4 + 2 + 4 + 1);
    }

    // --- property-style tests over random trees ---

    fn random_string(rng: &mut StdRng) -> String {
        const ALPHABET: &[char] = &['a', 'b', 'z', '_', ' ', '0', '.', 'é', 'ß', '✓', '日', '🚀', '\u{0}', '\u{7f}'];
        let len = rng.random_range(0..6);
        (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect()
    }

    fn random_key(rng: &mut StdRng) -> Key {
        if rng.random_bool(0.25) {
            Key::Int(rng.random_range(-3..1000))
        } else {
            // Empty string keys are not representable (see decode_path); keep keys non-empty.
            let mut s = random_string(rng);
            if s.is_empty() {
                s.push('k');
            }
            Key::Str(s)
        }
    }

    fn random_float(rng: &mut StdRng) -> f64 {
        match rng.random_range(0..6) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -0.0,
            3 => f64::from_bits(rng.random()),
            _ => rng.random_range(-1e6..1e6),
        }
    }

    fn random_tree(rng: &mut StdRng, depth: u32) -> StreamValue {
        let leaf_only = depth == 0;
        match rng.random_range(0..if leaf_only { 6 } else { 10 }) {
            0 => StreamValue::None,
            1 => StreamValue::Bool(rng.random()),
            2 => StreamValue::Int(rng.random()),
            3 => StreamValue::Float(random_float(rng)),
            4 => StreamValue::Str(random_string(rng)),
            5 => StreamValue::Bytes((0..rng.random_range(0..5)).map(|_| rng.random()).collect()),
            6 | 7 => {
                let mut entries: Vec<(Key, StreamValue)> = Vec::new();
                for _ in 0..rng.random_range(0..5) {
                    let key = random_key(rng);
                    if entries.iter().all(|(k, _)| *k != key) {
                        entries.push((key, random_tree(rng, depth - 1)));
                    }
                }
                StreamValue::Dict(entries)
            }
            8 => StreamValue::List((0..rng.random_range(0..5)).map(|_| random_tree(rng, depth - 1)).collect()),
            _ => StreamValue::Numpy((0..rng.random_range(0..4)).map(|_| random_float(rng)).collect()),
        }
    }

    #[test]
    fn random_streams_round_trip_through_the_ui_fold() {
        let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
        for case in 0..500 {
            let mut enc = StreamEncoder::new();
            let mut expected = Vec::new();
            let mut chunks = Vec::new();
            let objects = rng.random_range(0..6);
            for i in 0..objects {
                if rng.random_bool(0.3) {
                    let (checked, total) = (rng.random_range(0..10), rng.random_range(0..10));
                    let n = enc.progress_count();
                    enc.progress(checked, total);
                    expected.push((Key::Str(format!("progress_{n}")), StreamValue::list([checked, total])));
                }
                // Distinct consecutive keys: repeated ones would merge.
                let key = if rng.random_bool(0.2) { Key::Int(i) } else { Key::Str(format!("run{i}")) };
                let tree = random_tree(&mut rng, 4);
                enc.object(key.clone(), &tree).unwrap();
                expected.push((key, tree.lowered()));
                if rng.random_bool(0.5) {
                    chunks.push(enc.take());
                }
            }
            chunks.push(enc.finish());
            let body = chunks.concat();
            let decoded = decode_objects(&body).unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert_eq!(decoded, expected, "case {case}");
            // Re-encoding the decoded objects reproduces the body byte for byte.
            let mut again = StreamEncoder::new();
            for (key, value) in &decoded {
                again.object(key.clone(), value).unwrap();
            }
            assert_eq!(again.finish(), body, "case {case}");
        }
    }

    #[test]
    fn random_trees_flatten_with_one_record_per_leaf_marker_and_empty_dict() {
        fn expected_records(v: &StreamValue) -> u64 {
            match v {
                StreamValue::List(items) => 1 + items.iter().map(expected_records).sum::<u64>(),
                StreamValue::Dict(entries) if entries.is_empty() => 1,
                StreamValue::Dict(entries) => entries.iter().map(|(_, v)| expected_records(v)).sum(),
                StreamValue::Numpy(_) => 4,
                _ => 1,
            }
        }
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let tree = random_tree(&mut rng, 5);
            let mut enc = StreamEncoder::new();
            enc.object("r", &tree).unwrap();
            assert_eq!(enc.record_count(), expected_records(&tree));
            let records = decode_records(enc.buffer()).unwrap();
            assert_eq!(records.len() as u64, expected_records(&tree));
            // Every record of one object shares its first component (contiguity, §3.5 rule 1).
            assert!(records.iter().all(|r| r.path.first() == Some(&Key::from("r"))));
        }
    }
}
