//! The narrow interface a local storage engine (in-memory, redb, fjall) offers to the transaction
//! layer: consistent snapshots and atomic, durable application of a resolved write batch.
//!
//! Everything FoundationDB-like (read-your-writes, conflicts, limits) lives above, in `local.rs`,
//! so every local engine behaves identically.

use super::error::KvError;

/// Key-value pairs in key order, as engines return them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A write that survives conflict resolution, applied by the engine in order: first every cleared
/// range, then the point operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointOp {
    /// Set the key to this value.
    Set(Vec<u8>),
    /// Remove the key.
    Clear,
    /// Apply these little-endian additions in order to the committed value.
    Add(Vec<Vec<u8>>),
}

/// A transaction's writes, resolved for the engine.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Half-open ranges to clear, applied before `ops`.
    pub cleared: Vec<(Vec<u8>, Vec<u8>)>,
    /// Point operations in key order.
    pub ops: Vec<(Vec<u8>, PointOp)>,
}

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.cleared.is_empty() && self.ops.is_empty()
    }
}

/// A consistent, immutable view of the engine's committed data.
pub trait EngineSnapshot: Send + Sync + 'static {
    /// The committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Up to `limit` pairs (0: all) in `[begin, end)`, ascending or, with `reverse`, descending.
    fn range(&self, begin: &[u8], end: &[u8], reverse: bool, limit: usize) -> Result<Pairs, KvError>;
}

/// A local ordered key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// A snapshot of everything committed so far.
    fn snapshot(&self) -> Result<std::sync::Arc<dyn EngineSnapshot>, KvError>;
    /// Applies the batch atomically and makes it visible to new snapshots, without waiting for
    /// it to reach the disk (see [`Engine::sync`]). The caller serialises calls.
    fn apply(&self, batch: &WriteBatch) -> Result<(), KvError>;
    /// Makes every batch applied so far durable: when this returns `Ok`, they survive a process
    /// kill and a power loss. Separate from `apply` so that one sync can cover the batches of
    /// many concurrent commits (group commit, see `LocalDb`).
    fn sync(&self) -> Result<(), KvError> {
        Ok(())
    }
    /// Bytes the engine occupies on disk (0 for memory).
    fn disk_bytes(&self) -> u64 {
        0
    }
}

/// Applies `ops` to a value resolved by `current`: shared by engines for `PointOp::Add`.
pub fn resolve_add(current: Option<Vec<u8>>, params: &[Vec<u8>]) -> Vec<u8> {
    let mut v = current;
    for p in params {
        v = Some(super::types::atomic_add(v.as_deref(), p));
    }
    v.unwrap_or_default()
}
