//! The stored form of a dead letter, shared by the applier (which writes letters in a run's
//! transaction) and the sinks of [`super::dlq`] (which write, read and forward them): what a letter
//! holds and the bounds that keep any record's letter small enough for the store (the format is
//! documented in [`super::dlq`]).

use sha2::{Digest, Sha256};

use crate::storage::value::Value;

/// Longest error detail kept in a dead letter (the rest is cut).
pub const MAX_DETAIL: usize = 512;

/// Longest original value a stored (or oversized forwarded) dead letter keeps; longer values keep
/// this prefix plus their length and digest. With the key and detail bounds, a letter stays far
/// below the store's value limit of 100,000 bytes.
pub const MAX_STORED_VALUE_BYTES: usize = 64 * 1024;

/// Longest record key a stored dead letter keeps (run ids are 32 bytes).
pub const MAX_STORED_KEY_BYTES: usize = 1024;

/// A dead-lettered record to store under `("dlq", partition, offset)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Bounded reason label.
    pub reason: String,
    /// The record key (the run id) when known.
    pub key: Option<String>,
    /// The original record value, when the writer has it. [`Applier::apply`](super::Applier::apply) works on decoded
    /// entries, which do not carry their bytes, so it stores `None` and names the type instead.
    pub value: Option<Vec<u8>>,
    /// When it was dead-lettered (POSIX seconds).
    pub timestamp: f64,
    /// The message type, when known.
    pub message_type: Option<String>,
    /// The error's text.
    pub detail: String,
}

/// What a bounded copy of a value says about the cut original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The original length in bytes.
    pub len: usize,
    /// Lowercase hex SHA-256 of the original.
    pub sha256: String,
}

impl Truncation {
    /// Describes `original`.
    pub fn of(original: &[u8]) -> Self {
        Self { len: original.len(), sha256: hex::encode(Sha256::digest(original)) }
    }
}

/// Returns `value` itself when it has at most `max` bytes, else its first `max` bytes with what
/// the cut removed.
pub fn bound_value(value: &[u8], max: usize) -> (&[u8], Option<Truncation>) {
    if value.len() <= max { (value, None) } else { (&value[..max], Some(Truncation::of(value))) }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The stored map of `letter`: `{"reason","key","value","timestamp","type","detail"}` (absent parts
/// nil), cut to the bounds above, then `truncated`, `value_len` and `value_sha256` when the value
/// was cut and `key_len` when the key was.
pub fn stored_value(letter: &DeadLetter) -> Value {
    let key = letter.key.as_deref().map(|k| (cut_str(k, MAX_STORED_KEY_BYTES), k.len()));
    let (value, truncation) = match letter.value.as_deref() {
        Some(v) => {
            let (kept, truncation) = bound_value(v, MAX_STORED_VALUE_BYTES);
            (Value::Bin(kept.to_vec()), truncation)
        }
        None => (Value::Nil, None),
    };
    let mut fields = vec![
        (Value::from("reason"), Value::from(letter.reason.as_str())),
        (Value::from("key"), key.map_or(Value::Nil, |(k, _)| Value::from(k))),
        (Value::from("value"), value),
        (Value::from("timestamp"), Value::Float(letter.timestamp)),
        (Value::from("type"), letter.message_type.as_deref().map_or(Value::Nil, Value::from)),
        (Value::from("detail"), Value::from(cut_str(&letter.detail, MAX_DETAIL))),
    ];
    if let Some(t) = truncation {
        fields.push((Value::from("truncated"), Value::Bool(true)));
        fields.push((Value::from("value_len"), Value::Int(t.len as i128)));
        fields.push((Value::from("value_sha256"), Value::Str(t.sha256)));
    }
    if let Some((kept, len)) = key
        && kept.len() < len
    {
        fields.push((Value::from("key_len"), Value::Int(len as i128)));
    }
    Value::Map(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_character_boundaries() {
        assert_eq!(cut_str("héllo", 2), "h");
        assert_eq!(cut_str("héllo", 3), "hé");
        assert_eq!(cut_str("abc", 10), "abc");
    }
}
