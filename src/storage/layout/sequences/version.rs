//! The schema-version key that names a store's sequence layout, decoded strictly:
//!
//! | Key (under ⟨system⟩) | Value |
//! |---|---|
//! | `("matyan_rs_sequences",)` | mp(map) `{"layout": "chunked", "format": 1}` |
//!
//! Only a chunked store has the key. A store without it is key-per-step, the reference's layout:
//! an existing Matyan cluster, or a new store made with `storage.sequence_layout = "key_per_step"`,
//! which thus stays byte-identical to what the Python backend writes. A new store (nothing under
//! ⟨runs⟩) takes the configured layout, and the key is written in the transaction that saw it
//! empty. Any other value fails the open: a layout this build cannot read must not be written to.

use crate::storage::kv::{Database, RangeOption, RetryOptions, Transaction};
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::super::{Dirs, LayoutError};

/// The key's only element.
const KEY: &str = "matyan_rs_sequences";
/// The chunk format this build reads and writes (`codec.rs`).
const CHUNK_FORMAT: i128 = 1;

/// A sequence layout, as `storage.sequence_layout` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceLayoutKind {
    /// The reference's one key per step and column.
    KeyPerStep,
    /// Chunks of consecutive steps.
    Chunked,
}

impl SequenceLayoutKind {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyPerStep => "key_per_step",
            Self::Chunked => "chunked",
        }
    }
}

/// The schema-version key.
pub fn key(dirs: &Dirs) -> Vec<u8> {
    tuple::pack_with_prefix(&dirs.system, &[Elem::from(KEY)])
}

/// The value a chunked store holds under [`key`].
pub fn chunked_value() -> Result<Vec<u8>, LayoutError> {
    let v = Value::Map(vec![
        (Value::from("layout"), Value::from("chunked")),
        (Value::from("format"), Value::Int(CHUNK_FORMAT)),
    ]);
    value::encode(&v).map_err(|e| LayoutError::Encode(e.to_string()))
}

/// Decodes a stored version value: exactly `{"layout": "chunked", "format": 1}`.
pub fn decode(bytes: &[u8]) -> Result<SequenceLayoutKind, LayoutError> {
    let bad = |why: &str| LayoutError::Corrupt(format!("sequence layout version key: {why}"));
    let Value::Map(entries) = value::decode(bytes).map_err(|e| bad(&e.to_string()))? else {
        return Err(bad("not a map"));
    };
    let (mut layout, mut format) = (None, None);
    for (k, v) in entries {
        match (k.as_str(), v) {
            (Some("layout"), Value::Str(s)) if layout.is_none() => layout = Some(s),
            (Some("format"), Value::Int(i)) if format.is_none() => format = Some(i),
            (k, v) => return Err(bad(&format!("unexpected entry {k:?} = {}", v.type_name()))),
        }
    }
    match (layout.as_deref(), format) {
        (Some("chunked"), Some(CHUNK_FORMAT)) => Ok(SequenceLayoutKind::Chunked),
        (Some("chunked"), Some(f)) => Err(bad(&format!("chunk format {f} is not known to this build"))),
        (l, f) => Err(bad(&format!("layout {l:?}, format {f:?}"))),
    }
}

/// The layout recorded for the store, or key-per-step when no key is stored.
pub async fn recorded(tx: &Transaction, dirs: &Dirs) -> Result<SequenceLayoutKind, LayoutError> {
    match tx.get(&key(dirs), false).await? {
        Some(bytes) => decode(&bytes),
        None => Ok(SequenceLayoutKind::KeyPerStep),
    }
}

/// Settles the layout of the store: the recorded one; for a store without the key, key-per-step
/// when ⟨runs⟩ holds anything, else `wanted` (recorded when chunked).
pub async fn settle(db: &Database, dirs: &Dirs, wanted: SequenceLayoutKind) -> Result<SequenceLayoutKind, LayoutError> {
    db.run(&RetryOptions::default(), |tx| async move {
        if let Some(bytes) = tx.get(&key(dirs), false).await? {
            return decode(&bytes);
        }
        let (b, e) = tuple::range(&dirs.runs, &[]);
        let used = !tx.get_range(&RangeOption::new(b, e).limit(1), false).await?.is_empty();
        if used || wanted == SequenceLayoutKind::KeyPerStep {
            return Ok(SequenceLayoutKind::KeyPerStep);
        }
        tx.set(&key(dirs), &chunked_value()?);
        Ok(SequenceLayoutKind::Chunked)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_chunked_value_decodes() {
        assert_eq!(decode(&chunked_value().unwrap()).unwrap(), SequenceLayoutKind::Chunked);
        let enc = |v: Value| value::encode(&v).unwrap();
        let map = |entries: Vec<(&str, Value)>| {
            enc(Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
        };
        for bad in [
            enc(Value::from("chunked")),
            map(vec![("layout", Value::from("chunked"))]),
            map(vec![("layout", Value::from("chunked")), ("format", Value::Int(2))]),
            map(vec![("layout", Value::from("key_per_step")), ("format", Value::Int(1))]),
            map(vec![("layout", Value::from("chunked")), ("format", Value::Int(1)), ("x", Value::Nil)]),
            vec![0xc1],
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }
}
