//! The schema-version key that names a store's sequence layout, decoded strictly:
//!
//! | Key (under ⟨system⟩) | Value |
//! |---|---|
//! | `("matyan_rs_sequences",)` | mp(map) `{"layout": "chunked", "format": 1}` |
//! | same key, during `matyan migrate sequences` | mp(map) `{"layout": "migrating", "from": L, "to": L, "format": 1}` |
//!
//! with `L` one of `"key_per_step"`, `"chunked"` (`docs/adr/0009-sequence-migration.md`). Every
//! sequence read and write reads the key in its own transaction ([`read_state`]), so a process
//! sees a migration another process started. Only a chunked or migrating store has the key. A store without it is key-per-step, the reference's layout:
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

/// What the version key records: one layout, or a migration between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Every sequence is in this layout.
    Settled(SequenceLayoutKind),
    /// `matyan migrate sequences` is moving the series from `from` to `to`: reads merge both
    /// layouts (a step in `to` wins), writes go to `to`.
    Migrating {
        /// The layout the series leave.
        from: SequenceLayoutKind,
        /// The layout the series reach, and new points go to.
        to: SequenceLayoutKind,
    },
}

impl VersionState {
    /// The layout new points are written to.
    pub fn write_kind(self) -> SequenceLayoutKind {
        match self {
            Self::Settled(kind) | Self::Migrating { to: kind, .. } => kind,
        }
    }
}

/// The value a store migrating from `from` to `to` holds under [`key`].
pub fn migrating_value(from: SequenceLayoutKind, to: SequenceLayoutKind) -> Result<Vec<u8>, LayoutError> {
    let v = Value::Map(vec![
        (Value::from("layout"), Value::from("migrating")),
        (Value::from("from"), Value::from(from.as_str())),
        (Value::from("to"), Value::from(to.as_str())),
        (Value::from("format"), Value::Int(CHUNK_FORMAT)),
    ]);
    value::encode(&v).map_err(|e| LayoutError::Encode(e.to_string()))
}

/// Decodes a stored version value: exactly the chunked value, or a migrating value between the
/// two different layouts.
pub fn decode_state(bytes: &[u8]) -> Result<VersionState, LayoutError> {
    let bad = |why: &str| LayoutError::Corrupt(format!("sequence layout version key: {why}"));
    let Value::Map(entries) = value::decode(bytes).map_err(|e| bad(&e.to_string()))? else {
        return Err(bad("not a map"));
    };
    if !entries.iter().any(|(k, v)| k.as_str() == Some("layout") && v.as_str() == Some("migrating")) {
        return decode(bytes).map(VersionState::Settled);
    }
    let kind = |s: &str| match s {
        "key_per_step" => Some(SequenceLayoutKind::KeyPerStep),
        "chunked" => Some(SequenceLayoutKind::Chunked),
        _ => None,
    };
    let (mut layout, mut from, mut to, mut format) = (false, None, None, None);
    for (k, v) in entries {
        match (k.as_str(), v) {
            (Some("layout"), Value::Str(s)) if !layout && s == "migrating" => layout = true,
            (Some("from"), Value::Str(s)) if from.is_none() => from = Some(kind(&s).ok_or_else(|| bad(&s))?),
            (Some("to"), Value::Str(s)) if to.is_none() => to = Some(kind(&s).ok_or_else(|| bad(&s))?),
            (Some("format"), Value::Int(i)) if format.is_none() => format = Some(i),
            (k, v) => return Err(bad(&format!("unexpected entry {k:?} = {}", v.type_name()))),
        }
    }
    match (from, to, format) {
        (Some(from), Some(to), Some(CHUNK_FORMAT)) if from != to => Ok(VersionState::Migrating { from, to }),
        (_, _, Some(f)) if f != CHUNK_FORMAT => Err(bad(&format!("chunk format {f} is not known to this build"))),
        (from, to, f) => Err(bad(&format!("migrating from {from:?} to {to:?}, format {f:?}"))),
    }
}

/// The state under the version key `key`, in `tx`: key-per-step when no key is stored. A
/// non-snapshot read makes a write conflict with the migration step that changes the key.
pub async fn read_state(tx: &Transaction, key: &[u8], snapshot: bool) -> Result<VersionState, LayoutError> {
    match tx.get(key, snapshot).await? {
        Some(bytes) => decode_state(&bytes),
        None => Ok(VersionState::Settled(SequenceLayoutKind::KeyPerStep)),
    }
}

/// The state recorded for the store, key-per-step when no key is stored.
pub async fn recorded(tx: &Transaction, dirs: &Dirs) -> Result<VersionState, LayoutError> {
    read_state(tx, &key(dirs), false).await
}

/// Settles the layout of the store: the recorded state; for a store without the key, key-per-step
/// when ⟨runs⟩ holds anything, else `wanted` (recorded when chunked).
pub async fn settle(db: &Database, dirs: &Dirs, wanted: SequenceLayoutKind) -> Result<VersionState, LayoutError> {
    db.run(&RetryOptions::default(), |tx| async move {
        if let Some(bytes) = tx.get(&key(dirs), false).await? {
            return decode_state(&bytes);
        }
        let (b, e) = tuple::range(&dirs.runs, &[]);
        let used = !tx.get_range(&RangeOption::new(b, e).limit(1), false).await?.is_empty();
        if used || wanted == SequenceLayoutKind::KeyPerStep {
            return Ok(VersionState::Settled(SequenceLayoutKind::KeyPerStep));
        }
        tx.set(&key(dirs), &chunked_value()?);
        Ok(VersionState::Settled(SequenceLayoutKind::Chunked))
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

    #[test]
    fn only_a_migration_between_the_two_layouts_decodes_as_migrating() {
        use SequenceLayoutKind::{Chunked, KeyPerStep};
        for (from, to) in [(KeyPerStep, Chunked), (Chunked, KeyPerStep)] {
            let state = decode_state(&migrating_value(from, to).unwrap()).unwrap();
            assert_eq!(state, VersionState::Migrating { from, to });
            assert_eq!(state.write_kind(), to);
        }
        assert_eq!(decode_state(&chunked_value().unwrap()).unwrap(), VersionState::Settled(Chunked));
        let map = |entries: Vec<(&str, Value)>| {
            value::encode(&Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())).unwrap()
        };
        let migrating = |from: &str, to: &str, format: i128| {
            vec![
                ("layout", Value::from("migrating")),
                ("from", Value::from(from)),
                ("to", Value::from(to)),
                ("format", Value::Int(format)),
            ]
        };
        let mut extra = migrating("key_per_step", "chunked", 1);
        extra.push(("at", Value::Int(3)));
        for bad in [
            map(migrating("chunked", "chunked", 1)),
            map(migrating("key_per_step", "columnar", 1)),
            map(migrating("key_per_step", "chunked", 2)),
            map(migrating("key_per_step", "chunked", 1).into_iter().take(3).collect()),
            map(extra),
        ] {
            assert!(decode_state(&bad).is_err(), "{bad:?}");
        }
    }
}
