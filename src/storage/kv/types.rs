//! Value types of the KV contract: key-value pairs, key selectors, range options and limits.

use std::time::Duration;

/// A key and its value as returned by a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A range boundary expressed against a key, as FoundationDB's key selectors with offset 1 (the only
/// ones the Matyan layout needs): `first_greater_or_equal(k)` and `first_greater_than(k)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySelector {
    key: Vec<u8>,
    or_equal: bool,
}

impl KeySelector {
    /// The first key at or after `key`.
    pub fn first_greater_or_equal(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), or_equal: false }
    }

    /// The first key strictly after `key`.
    pub fn first_greater_than(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), or_equal: true }
    }

    /// The selector as an inclusive lower / exclusive upper key bound: the smallest key it selects.
    pub fn resolve(&self) -> Vec<u8> {
        if self.or_equal {
            let mut k = self.key.clone();
            k.push(0);
            k
        } else {
            self.key.clone()
        }
    }

    /// The selector's reference key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Whether this is `first_greater_than`.
    pub fn or_equal(&self) -> bool {
        self.or_equal
    }
}

/// A range read request: keys from `begin` (inclusive) to `end` (exclusive) after selector resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOption {
    pub begin: KeySelector,
    pub end: KeySelector,
    /// Maximum number of pairs; 0 means no limit.
    pub limit: usize,
    /// Return pairs in descending key order (the limit applies from the end).
    pub reverse: bool,
}

impl RangeOption {
    /// The half-open key range `[begin, end)`.
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            begin: KeySelector::first_greater_or_equal(begin),
            end: KeySelector::first_greater_or_equal(end),
            limit: 0,
            reverse: false,
        }
    }

    /// Every key that starts with `prefix` (excluding `prefix` itself only if nothing equals it).
    pub fn prefix(prefix: &[u8]) -> Self {
        Self::new(prefix.to_vec(), strinc(prefix))
    }

    /// Sets the limit.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Sets descending order.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// The resolved `[begin, end)` bounds.
    pub fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        (self.begin.resolve(), self.end.resolve())
    }
}

/// The first key after every key that starts with `prefix` (FoundationDB's `strinc`): trailing
/// `0xff` bytes are dropped and the last byte incremented. An all-`0xff` prefix gives `[0xff]`.
pub fn strinc(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.last_mut() {
        if *last == 0xff {
            k.pop();
        } else {
            *last += 1;
            return k;
        }
    }
    vec![0xff]
}

/// FoundationDB's limits, enforced identically by every backend. [`Limits::FDB`] is the one place
/// these numbers are written: the configuration, the batcher and the decoder refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum affected data of one transaction (mutations plus conflict ranges).
    pub max_txn_bytes: usize,
    /// Maximum key size.
    pub max_key_bytes: usize,
    /// Maximum value size.
    pub max_value_bytes: usize,
    /// Maximum age of a read version.
    pub txn_lifetime: Duration,
}

impl Limits {
    /// FoundationDB 7.3's limits: 10,000,000 bytes, 10,000-byte keys, 100,000-byte values, 5 s.
    pub const FDB: Limits = Limits {
        max_txn_bytes: 10_000_000,
        max_key_bytes: 10_000,
        max_value_bytes: 100_000,
        txn_lifetime: Duration::from_secs(5),
    };

    /// Whether a transaction (or a batch that becomes one) of `age` still commits: strictly below
    /// the lifetime, since one started at the limit is already too old. The one age rule of
    /// `ingest.max_txn_age_ms`, `query.snapshot_max_age_ms` and the batcher's `max_age`.
    pub fn within_lifetime(&self, age: Duration) -> bool {
        age < self.txn_lifetime
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::FDB
    }
}

/// Little-endian addition as FoundationDB's `ADD` atomic op does it: the existing value is truncated
/// or zero-extended to the parameter's length, added with wrap-around, and the result has the
/// parameter's length. A missing value counts as zero.
pub fn atomic_add(existing: Option<&[u8]>, param: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; param.len()];
    let mut carry = 0u16;
    for (i, p) in param.iter().enumerate() {
        let e = existing.and_then(|v| v.get(i)).copied().unwrap_or(0);
        let s = e as u16 + *p as u16 + carry;
        out[i] = (s & 0xff) as u8;
        carry = s >> 8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strinc_drops_trailing_ff_and_increments() {
        assert_eq!(strinc(b"ab"), b"ac".to_vec());
        assert_eq!(strinc(&[1, 0xff, 0xff]), vec![2]);
        assert_eq!(strinc(&[0xff]), vec![0xff]);
    }

    #[test]
    fn atomic_add_is_little_endian_with_param_length() {
        assert_eq!(atomic_add(None, &[5, 0]), vec![5, 0]);
        assert_eq!(atomic_add(Some(&[0xff, 0]), &[1, 0]), vec![0, 1]);
        // Existing value truncated to the parameter's length.
        assert_eq!(atomic_add(Some(&[1, 2, 3]), &[1]), vec![2]);
        // Wrap-around.
        assert_eq!(atomic_add(Some(&[0xff]), &[1]), vec![0]);
        // -1 as i64 added to 5.
        let r = atomic_add(Some(&5i64.to_le_bytes()), &(-1i64).to_le_bytes());
        assert_eq!(i64::from_le_bytes(r.try_into().unwrap()), 4);
    }

    #[test]
    fn selectors_resolve_to_bounds() {
        assert_eq!(KeySelector::first_greater_than(b"a".to_vec()).resolve(), b"a\x00".to_vec());
        assert_eq!(KeySelector::first_greater_or_equal(b"a".to_vec()).resolve(), b"a".to_vec());
    }
}
