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
    /// Keeps the keys starting with `prefix` apart from the others where the engine can (fjall: a
    /// tree of their own, flushed, compacted and cached apart), and says whether they are now.
    /// Only a prefix none of whose keys is stored yet is moved; once kept apart it stays so
    /// across reopens, and once refused it stays refused until the store is opened again. Reads,
    /// writes and transactions see no difference. The caller serialises this with
    /// [`Engine::apply`].
    fn keep_apart(&self, _prefix: &[u8]) -> Result<bool, KvError> {
        Ok(false)
    }
    /// What [`Engine::keep_apart`] would answer for `prefix` when the answer is already settled
    /// (kept apart, or refused until the store is opened again), found without changing anything;
    /// `None` when only `keep_apart` can tell. A settled answer does not depend on the writes in
    /// flight, so the caller asks this before taking the commit order.
    fn kept_apart(&self, _prefix: &[u8]) -> Option<bool> {
        None
    }
    /// Forgets the keys in `[begin, end)`: the caller reads and writes none of them again (it keeps
    /// its own record of what is gone, as the embedded queue's start offset does), so the engine
    /// frees their space the cheapest way it has, outside the commit order: at once, in part, or
    /// at a later call over the same keys. Afterwards a read of the range may see any value its
    /// keys ever held, or none; keys outside it are untouched, and nothing is logged for conflicts.
    /// The caller does not serialise this with [`Engine::apply`]: an engine that must, does.
    ///
    /// Memory and redb clear the range. fjall drops the tables lying wholly inside it, without a
    /// read or a tombstone, and leaves the rest (memtables, tables reaching past its ends) to a
    /// later call that covers their whole table: it frees space where the range's keys have a
    /// tree of their own ([`Engine::keep_apart`]) written in key order, as a queue partition's
    /// records are, and next to nothing where they share tables with other keys.
    fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError>;
    /// Bytes the engine occupies on disk (0 for memory).
    fn disk_bytes(&self) -> u64 {
        0
    }
    /// What the engine holds in memory now, by part (`None`: the engine does not say).
    fn memory(&self) -> Option<EngineMemory> {
        None
    }
}

/// Where an engine's memory goes, read from the engine's own counters: the parts it bounds by
/// configuration (`cache_bytes`, `memtable_bytes`) and the parts that follow the number of table
/// files (pinned filter and index blocks). The rest of a process's RSS is everything else: the
/// allocator's free lists, decoded records in flight, the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMemory {
    /// Memtables being written and sealed ones waiting for their flush.
    pub write_buffer_bytes: u64,
    /// Sealed memtables waiting for their flush.
    pub sealed_memtables: u64,
    /// Blocks in the block cache.
    pub cache_bytes: u64,
    /// Filter blocks held outside the cache (fjall pins level 0's).
    pub pinned_filter_bytes: u64,
    /// Index blocks held outside the cache (fjall pins levels 0 and 1's).
    pub pinned_index_bytes: u64,
    /// Table files, all levels.
    pub tables: u64,
    /// Table files in level 0.
    pub l0_tables: u64,
    /// Versions of the tree kept for snapshots that may still read them (fjall frees one only
    /// once no snapshot older than its successor is open); each holds its memtables.
    pub versions: u64,
    /// Memtables the kept versions hold, flushed or not (fjall's own sum, an upper bound).
    pub version_memtable_bytes: u64,
}

impl EngineMemory {
    /// The parts that hold bytes, together.
    pub fn total_bytes(&self) -> u64 {
        self.write_buffer_bytes + self.cache_bytes + self.pinned_filter_bytes + self.pinned_index_bytes
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
