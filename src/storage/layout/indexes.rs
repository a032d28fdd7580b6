//! `data/indexes` (⟨indexes⟩): tier 1–3 entries, each with its `_rev` twin, and tombstones.
//!
//! | Tier | Forward key |
//! |---|---|
//! | 1 | `("archived", bool, R)`, `("active", bool, R)`, `("created_at", float, R)`, `("experiment", name, R)`, `("tag", name, R)` |
//! | 2 | `("hparam", key, scalar, R)` (scalar in its own tuple type: 32 and 32.0 differ) |
//! | 3 | `("trace", sequence_name, R)` |
//! | reverse | `("_rev", R, *forward)` → `b""`, one per forward entry |
//! | tombstone | `("_deleted", R)` → mp(float deletion time) |
//!
//! Forward and reverse keys have empty values and are always written and removed together.

use crate::storage::kv::{KvError, RangeOption, Transaction};
use crate::storage::tuple::{self, Elem};
use crate::storage::value::{self, Value};

use super::LayoutError;

/// The `_rev` tag of reverse entries.
pub const REV: &str = "_rev";
/// The tombstone tag.
pub const DELETED: &str = "_deleted";

/// Index operations under the ⟨indexes⟩ prefix.
#[derive(Debug, Clone)]
pub struct Indexes {
    prefix: Vec<u8>,
}

impl Indexes {
    /// Indexes under `prefix`.
    pub fn new(prefix: &[u8]) -> Self {
        Self { prefix: prefix.to_vec() }
    }

    fn forward_key(&self, entry: &[Elem]) -> Vec<u8> {
        tuple::pack_with_prefix(&self.prefix, entry)
    }

    fn rev_key(&self, run: &str, entry: &[Elem]) -> Vec<u8> {
        let mut elems = Vec::with_capacity(entry.len() + 2);
        elems.push(Elem::from(REV));
        elems.push(Elem::from(run));
        elems.extend_from_slice(entry);
        tuple::pack_with_prefix(&self.prefix, &elems)
    }

    /// Writes the forward entry `entry` (whose last element is the run) and its `_rev` twin.
    pub fn add(&self, tx: &Transaction, run: &str, entry: &[Elem]) {
        tx.set(&self.forward_key(entry), b"");
        tx.set(&self.rev_key(run, entry), b"");
    }

    /// Removes the forward entry and its twin.
    pub fn remove(&self, tx: &Transaction, run: &str, entry: &[Elem]) {
        tx.clear(&self.forward_key(entry));
        tx.clear(&self.rev_key(run, entry));
    }

    /// Every forward entry of `run`, found through its `_rev` twins (optionally only those whose
    /// first element is `kind`, e.g. `hparam`).
    pub async fn entries_of_run(
        &self,
        tx: &Transaction,
        run: &str,
        kind: Option<&str>,
    ) -> Result<Vec<Vec<Elem>>, LayoutError> {
        let mut scope = vec![Elem::from(REV), Elem::from(run)];
        if let Some(kind) = kind {
            scope.push(Elem::from(kind));
        }
        let (b, e) = tuple::range(&self.prefix, &scope);
        let rev_prefix = tuple::pack_with_prefix(&self.prefix, &scope[..2]);
        let kvs = tx.get_range(&RangeOption::new(b, e), false).await?;
        kvs.iter()
            .map(|kv| {
                let suffix = &kv.key[rev_prefix.len()..];
                tuple::unpack(suffix).map_err(|e| LayoutError::Corrupt(format!("_rev entry: {e}")))
            })
            .collect()
    }

    /// Removes every index entry of `run` (forward and reverse), optionally only one `kind`.
    pub async fn deindex_run(&self, tx: &Transaction, run: &str, kind: Option<&str>) -> Result<usize, LayoutError> {
        let entries = self.entries_of_run(tx, run, kind).await?;
        for entry in &entries {
            self.remove(tx, run, entry);
        }
        Ok(entries.len())
    }

    /// Runs listed under a forward prefix such as `("trace", "loss")` or `("archived", false)`.
    pub async fn runs_under(
        &self,
        tx: &Transaction,
        scope: &[Elem],
        snapshot: bool,
    ) -> Result<Vec<String>, LayoutError> {
        self.runs_between(tx, scope, None, None, snapshot).await
    }

    /// Runs whose entry under `scope` has its next element in `[lo, hi)` (either end open), e.g.
    /// `("created_at",)` with float bounds or `("hparam", "lr")`. Bounds compare in FoundationDB's
    /// tuple order, so an int bound never matches float values and the reverse.
    pub async fn runs_between(
        &self,
        tx: &Transaction,
        scope: &[Elem],
        lo: Option<&Elem>,
        hi: Option<&Elem>,
        snapshot: bool,
    ) -> Result<Vec<String>, LayoutError> {
        let (mut b, mut e) = tuple::range(&self.prefix, scope);
        let bound = |v: &Elem| {
            let mut elems = scope.to_vec();
            elems.push(v.clone());
            tuple::pack_with_prefix(&self.prefix, &elems)
        };
        if let Some(lo) = lo {
            b = bound(lo);
        }
        if let Some(hi) = hi {
            e = bound(hi);
        }
        let base = tuple::pack_with_prefix(&self.prefix, scope);
        let kvs = tx.get_range(&RangeOption::new(b, e), snapshot).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let rest =
                tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(format!("index entry: {e}")))?;
            if let Some(Elem::Str(run)) = rest.last() {
                out.push(run.clone());
            }
        }
        Ok(out)
    }

    fn tombstone_key(&self, run: &str) -> Vec<u8> {
        tuple::pack_with_prefix(&self.prefix, &[Elem::from(DELETED), Elem::from(run)])
    }

    /// Writes (or refreshes) the tombstone of `run` with deletion time `now`.
    pub fn mark_deleted(&self, tx: &Transaction, run: &str, now: f64) {
        let mut buf = Vec::with_capacity(9);
        value::encode_f64(now, &mut buf);
        tx.set(&self.tombstone_key(run), &buf);
    }

    /// Whether `run` has a tombstone.
    pub async fn is_deleted(&self, tx: &Transaction, run: &str) -> Result<bool, KvError> {
        Ok(tx.get(&self.tombstone_key(run), false).await?.is_some())
    }

    /// Removes the tombstone of `run`.
    pub fn clear_tombstone(&self, tx: &Transaction, run: &str) {
        tx.clear(&self.tombstone_key(run));
    }

    /// Every tombstone as `(run, deletion time)`; a corrupt value lists as 0.0, as the reference does.
    pub async fn tombstones(&self, tx: &Transaction) -> Result<Vec<(String, f64)>, LayoutError> {
        let scope = [Elem::from(DELETED)];
        let (b, e) = tuple::range(&self.prefix, &scope);
        let base = tuple::pack_with_prefix(&self.prefix, &scope);
        let kvs = tx.get_range(&RangeOption::new(b, e), false).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let rest =
                tuple::unpack(&kv.key[base.len()..]).map_err(|e| LayoutError::Corrupt(format!("tombstone: {e}")))?;
            let Some(Elem::Str(run)) = rest.first() else {
                continue;
            };
            let ts = match value::decode(&kv.value) {
                Ok(Value::Float(f)) => f,
                Ok(Value::Int(i)) => i as f64,
                _ => 0.0,
            };
            out.push((run.clone(), ts));
        }
        Ok(out)
    }
}
