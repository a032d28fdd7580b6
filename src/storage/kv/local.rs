//! FoundationDB's transaction semantics over a local engine: read-your-writes, optimistic
//! serializable commits (read-conflict ranges checked against later commits' write ranges, as
//! FoundationDB's resolvers do), snapshot reads, atomic add, size accounting and limits.
//!
//! Commits are serialised by one lock; readers never block writers, nor each other: a read holds
//! its transaction's lock only to take the snapshot and the writes it must merge, so reads of one
//! transaction on different threads run in the engine at once. A transaction's read version is
//! taken at its first read (as FoundationDB does), and it fails with `transaction_too_old` once that
//! version is older than the lifetime limit.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::engine::{Engine, EngineSnapshot, PointOp, WriteBatch, resolve_add};
use super::error::KvError;
use super::types::{KeyValue, Limits, RangeOption};

/// The key after `key` in byte order (`key + \x00`).
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// `bound` cut to `limit + 1` bytes. No stored key is longer than `limit`, so the cut bound orders
/// every storable key exactly as the whole one did; FoundationDB cuts read and clear ranges the
/// same way, and engines never see a key they cannot hold (fjall panics past 65,535 bytes).
fn clamp_bound(mut bound: Vec<u8>, limit: usize) -> Vec<u8> {
    bound.truncate(limit.saturating_add(1));
    bound
}

/// Half-open key ranges `[begin, end)`.
type Ranges = Vec<(Vec<u8>, Vec<u8>)>;

/// Sorts and merges half-open ranges into a disjoint ascending list.
fn coalesce(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges.sort();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(ranges.len());
    for (b, e) in ranges {
        if b >= e {
            continue;
        }
        match out.last_mut() {
            Some(last) if b <= last.1 => {
                if e > last.1 {
                    last.1 = e;
                }
            }
            _ => out.push((b, e)),
        }
    }
    out
}

/// Whether `key` lies in one of the disjoint ascending `ranges`.
fn in_ranges(ranges: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    let i = ranges.partition_point(|r| r.1.as_slice() <= key);
    i < ranges.len() && ranges[i].0.as_slice() <= key
}

/// Whether `[b, e)` intersects one of the disjoint ascending `ranges`.
fn intersects(ranges: &[(Vec<u8>, Vec<u8>)], b: &[u8], e: &[u8]) -> bool {
    let i = ranges.partition_point(|r| r.1.as_slice() <= b);
    i < ranges.len() && ranges[i].0.as_slice() < e
}

/// What one commit wrote, for conflict checks: its point keys (sorted) and cleared ranges.
struct WriteSet {
    points: Vec<Vec<u8>>,
    ranges: Ranges,
}

impl WriteSet {
    /// Whether `[b, e)` contains a written key or meets a cleared range.
    fn intersects(&self, b: &[u8], e: &[u8]) -> bool {
        let i = self.points.partition_point(|p| p.as_slice() < b);
        (i < self.points.len() && self.points[i].as_slice() < e) || intersects(&self.ranges, b, e)
    }
}

/// Write sets of recent commits, kept only while some live transaction's read version predates them.
#[derive(Default)]
struct CommitLog {
    entries: VecDeque<(u64, WriteSet)>,
}

/// A database over a local engine.
pub struct LocalDb {
    engine: Box<dyn Engine>,
    limits: Limits,
    version: AtomicU64,
    log: Mutex<CommitLog>,
    /// Read versions of live transactions, with counts: commits older than the smallest are pruned.
    active: Mutex<BTreeMap<u64, usize>>,
    /// Every commit at or below this version is durable.
    synced: AtomicU64,
    /// Held by the one thread syncing the engine; committers waiting for it are covered by its
    /// sync or run the next one (group commit).
    sync_lock: Mutex<()>,
    /// Seeded fault injection (tests only): see [`super::faults`].
    #[cfg(test)]
    faults: Mutex<Option<Arc<super::faults::Faults>>>,
}

impl LocalDb {
    /// A database over `engine`, enforcing `limits`.
    pub fn new(engine: Box<dyn Engine>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            engine,
            limits,
            version: AtomicU64::new(1),
            log: Mutex::new(CommitLog::default()),
            active: Mutex::new(BTreeMap::new()),
            synced: AtomicU64::new(1),
            sync_lock: Mutex::new(()),
            #[cfg(test)]
            faults: Mutex::new(None),
        })
    }

    /// Installs (or with `None` removes) the fault handle every later commit consults.
    #[cfg(test)]
    pub fn set_faults(&self, faults: Option<Arc<super::faults::Faults>>) {
        *self.faults.lock() = faults;
    }

    /// The installed fault handle.
    #[cfg(test)]
    pub fn faults(&self) -> Option<Arc<super::faults::Faults>> {
        self.faults.lock().clone()
    }

    /// The limits this database enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes on disk used by the engine.
    pub fn disk_bytes(&self) -> u64 {
        self.engine.disk_bytes()
    }

    /// What the engine holds in memory, by part.
    pub fn engine_memory(&self) -> Option<super::engine::EngineMemory> {
        self.engine.memory()
    }

    /// [`Engine::keep_apart`], serialised with commits unless the engine's answer is settled
    /// ([`Engine::kept_apart`]): the queue asks at every open, for each partition, and would
    /// otherwise wait behind a commit in progress each time.
    ///
    /// [`Engine::keep_apart`]: super::engine::Engine::keep_apart
    /// [`Engine::kept_apart`]: super::engine::Engine::kept_apart
    pub fn keep_apart(&self, prefix: &[u8]) -> Result<bool, KvError> {
        if let Some(settled) = self.engine.kept_apart(prefix) {
            return Ok(settled);
        }
        let _log = self.log.lock();
        self.engine.keep_apart(prefix)
    }

    /// [`Engine::forget_range`], outside the commit order.
    ///
    /// [`Engine::forget_range`]: super::engine::Engine::forget_range
    pub fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        let limit = self.limits.max_key_bytes;
        self.engine.forget_range(&clamp_bound(begin.to_vec(), limit), &clamp_bound(end.to_vec(), limit))
    }

    /// A new transaction.
    pub fn create_trx(self: &Arc<Self>) -> LocalTxn {
        LocalTxn { db: Arc::clone(self), state: Mutex::new(TxnState::default()) }
    }

    fn acquire_read(self: &Arc<Self>) -> Result<ReadView, KvError> {
        let version = {
            let mut active = self.active.lock();
            let v = self.version.load(Ordering::SeqCst);
            *active.entry(v).or_insert(0) += 1;
            v
        };
        let registration = Registration { db: Arc::clone(self), version };
        let snapshot = self.engine.snapshot()?;
        Ok(ReadView { version, snapshot, started: Instant::now(), _registration: registration })
    }

    fn release(&self, version: u64) {
        let mut active = self.active.lock();
        if let Some(n) = active.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                active.remove(&version);
            }
        }
    }

    /// Commits a batch: [`apply_batch`](Self::apply_batch) under the log lock, then waits until the
    /// engine has synced it. Many committers share one sync: while one thread syncs, the others
    /// queue on `sync_lock`; the first of them to get it syncs everything applied by then, and the
    /// rest find their version already durable. A commit is acknowledged only once durable.
    fn commit_batch(&self, read: Option<ReadView>, read_conflicts: Ranges, batch: WriteBatch) -> Result<(), KvError> {
        let version = self.apply_batch(read, read_conflicts, batch)?;
        if self.synced.load(Ordering::SeqCst) >= version {
            return Ok(());
        }
        let _syncing = self.sync_lock.lock();
        if self.synced.load(Ordering::SeqCst) >= version {
            return Ok(());
        }
        // Versions are bumped after their batch is applied: everything up to `through` is in
        // the engine and covered by this sync.
        let through = self.version.load(Ordering::SeqCst);
        if let Err(e) = self.engine.sync() {
            // The batch is applied and visible but may not survive a crash: FDB's answer to a
            // commit whose outcome is unknown, which idempotent transaction bodies retry.
            tracing::error!(error = %e, "engine sync failed");
            return Err(KvError::CommitUnknownResult);
        }
        self.synced.fetch_max(through, Ordering::SeqCst);
        Ok(())
    }

    /// Checks conflicts, applies the batch and records its write set for transactions still
    /// reading at older versions; returns the commit's version. `read` is the committing
    /// transaction's own read view: it is released under the log lock, so no commit can prune
    /// history it still needs.
    fn apply_batch(&self, read: Option<ReadView>, read_conflicts: Ranges, batch: WriteBatch) -> Result<u64, KvError> {
        let mut log = self.log.lock();
        if let Some(rv) = read.as_ref().map(|r| r.version) {
            let reads = coalesce(read_conflicts);
            for (version, writes) in log.entries.iter().rev() {
                if *version <= rv {
                    break;
                }
                if reads.iter().any(|(b, e)| writes.intersects(b, e)) {
                    return Err(KvError::NotCommitted);
                }
            }
        }
        self.engine.apply(&batch)?;
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        drop(read);
        // Only transactions that took their read version before this commit can conflict with it.
        let min_active = self.active.lock().keys().next().copied();
        match min_active {
            None => log.entries.clear(),
            Some(min) => {
                while log.entries.front().is_some_and(|(v, _)| *v <= min) {
                    log.entries.pop_front();
                }
                let points = batch.ops.into_iter().map(|(k, _)| k).collect();
                log.entries.push_back((version, WriteSet { points, ranges: batch.cleared }));
            }
        }
        Ok(version)
    }
}

/// Unregisters a read version when the transaction holding it is dropped or finished.
struct Registration {
    db: Arc<LocalDb>,
    version: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.db.release(self.version);
    }
}

struct ReadView {
    version: u64,
    snapshot: Arc<dyn EngineSnapshot>,
    started: Instant,
    _registration: Registration,
}

#[derive(Default)]
struct TxnState {
    read: Option<ReadView>,
    /// Sets and clears not yet merged into `writes`, in call order: a write-only transaction
    /// sorts them once at commit instead of keeping a tree up to date.
    pending: Vec<(Vec<u8>, PointOp)>,
    /// Indexes in `pending` of its lowest and highest key, so that a point read of a key outside
    /// them leaves `pending` as it is (the sequence layer reads its version key in ⟨system⟩
    /// between batches of ⟨runs⟩ writes).
    pending_bounds: (usize, usize),
    writes: BTreeMap<Vec<u8>, PointOp>,
    /// Disjoint ascending ranges cleared by this transaction (before any later point write).
    cleared: Vec<(Vec<u8>, Vec<u8>)>,
    read_conflicts: Vec<(Vec<u8>, Vec<u8>)>,
    size: usize,
    deferred: Option<KvError>,
    done: bool,
}

impl TxnState {
    /// Appends a pending write, keeping [`TxnState::pending_bounds`].
    fn push_pending(&mut self, key: &[u8], op: PointOp) {
        let at = self.pending.len();
        let (lo, hi) = self.pending_bounds;
        if at == 0 {
            self.pending_bounds = (0, 0);
        } else if self.pending.get(lo).is_some_and(|(k, _)| key < k.as_slice()) {
            self.pending_bounds.0 = at;
        } else if self.pending.get(hi).is_some_and(|(k, _)| key > k.as_slice()) {
            self.pending_bounds.1 = at;
        }
        self.pending.push((key.to_vec(), op));
    }

    /// Whether `key` may have a pending write (it lies within their keys' bounds).
    fn may_be_pending(&self, key: &[u8]) -> bool {
        let (lo, hi) = self.pending_bounds;
        match (self.pending.get(lo), self.pending.get(hi)) {
            (Some((lo, _)), Some((hi, _))) => lo.as_slice() <= key && key <= hi.as_slice(),
            _ => !self.pending.is_empty(),
        }
    }

    /// Merges pending writes into the tree, in call order.
    fn flush_pending(&mut self) {
        for (k, op) in self.pending.drain(..) {
            self.writes.insert(k, op);
        }
    }

    /// Whether reads must merge this transaction's writes.
    fn has_writes(&self) -> bool {
        !(self.pending.is_empty() && self.writes.is_empty() && self.cleared.is_empty())
    }

    /// The final point operations in key order (the last write of a key wins).
    fn take_ops(&mut self) -> Vec<(Vec<u8>, PointOp)> {
        if !self.writes.is_empty() {
            self.flush_pending();
            return std::mem::take(&mut self.writes).into_iter().collect();
        }
        let mut ops = std::mem::take(&mut self.pending);
        // Stable: equal keys keep call order, and the dedup below keeps the last of them.
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Vec<u8>, PointOp)> = Vec::with_capacity(ops.len());
        for (k, op) in ops {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = op,
                _ => out.push((k, op)),
            }
        }
        out
    }
}

/// A transaction on a [`LocalDb`].
pub struct LocalTxn {
    db: Arc<LocalDb>,
    state: Mutex<TxnState>,
}

impl LocalTxn {
    fn read_view<'a>(&self, st: &'a mut TxnState) -> Result<&'a ReadView, KvError> {
        if st.done {
            return Err(KvError::TransactionCancelled);
        }
        let view = match st.read.take() {
            Some(view) => view,
            None => self.db.acquire_read()?,
        };
        let view = &*st.read.insert(view);
        let lifetime = self.db.limits.txn_lifetime;
        if view.started.elapsed() > lifetime {
            return Err(KvError::TransactionTooOld { lifetime_ms: lifetime.as_millis() as u64 });
        }
        Ok(view)
    }

    /// Reads `key`, seeing this transaction's own writes; a non-snapshot read adds a read conflict.
    ///
    /// The transaction's lock is held only to take the snapshot and this key's own write, not while
    /// the engine reads: reads of one transaction run at once, as FoundationDB's futures do.
    pub fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>, KvError> {
        let (snap, adds) = {
            let mut st = self.state.lock();
            let snap = Arc::clone(&self.read_view(&mut st)?.snapshot);
            // No key longer than the limit can be stored, so it is absent (FoundationDB answers the
            // same) and needs no read conflict.
            if key.len() > self.db.limits.max_key_bytes {
                return Ok(None);
            }
            if st.may_be_pending(key) {
                st.flush_pending();
            }
            let adds = match st.writes.get(key) {
                Some(PointOp::Set(v)) => return Ok(Some(v.clone())),
                Some(PointOp::Clear) => return Ok(None),
                Some(PointOp::Add(ps)) => Some(ps.clone()),
                None if in_ranges(&st.cleared, key) => return Ok(None),
                None => None,
            };
            (snap, adds)
        };
        let stored = snap.get(key)?;
        let committed = match adds {
            Some(ps) => Some(resolve_add(stored, &ps)),
            None => stored,
        };
        if !snapshot {
            let end = key_after(key);
            let mut st = self.state.lock();
            st.size += key.len() + end.len();
            st.read_conflicts.push((key.to_vec(), end));
        }
        Ok(committed)
    }

    /// Reads a range, merging this transaction's writes over the snapshot. The lock is held only
    /// to take the snapshot and the writes within the range (see [`LocalTxn::get`]).
    pub fn get_range(&self, opt: &RangeOption, snapshot: bool) -> Result<Vec<KeyValue>, KvError> {
        let (begin, end) = opt.bounds();
        let limit = self.db.limits.max_key_bytes;
        let (begin, end) = (clamp_bound(begin, limit), clamp_bound(end, limit));
        let (snap, overlay) = {
            let mut st = self.state.lock();
            let snap = Arc::clone(&self.read_view(&mut st)?.snapshot);
            if begin >= end {
                return Ok(Vec::new());
            }
            let overlay = if st.has_writes() {
                st.flush_pending();
                Some(Overlay::within(&st, &begin, &end))
            } else {
                None
            };
            (snap, overlay)
        };
        let (out, limited) = match overlay {
            Some(overlay) => merged_range(&overlay, snap.as_ref(), &begin, &end, opt.reverse, opt.limit)?,
            None => {
                let pairs = snap.range(&begin, &end, opt.reverse, opt.limit)?;
                let limited = opt.limit != 0 && pairs.len() == opt.limit;
                (pairs.into_iter().map(|(key, value)| KeyValue { key, value }).collect(), limited)
            }
        };
        if !snapshot {
            let range = match (limited, out.last()) {
                (true, Some(last)) if !opt.reverse => (begin, key_after(&last.key)),
                (true, Some(last)) => (last.key.clone(), end),
                _ => (begin, end),
            };
            let mut st = self.state.lock();
            st.size += range.0.len() + range.1.len();
            st.read_conflicts.push(range);
        }
        Ok(out)
    }

    fn check_key(&self, st: &mut TxnState, key: &[u8]) -> bool {
        let limit = self.db.limits.max_key_bytes;
        let err = if key.len() > limit {
            Some(KvError::KeyTooLarge { size: key.len(), limit })
        } else if key.first() == Some(&0xff) {
            Some(KvError::KeyOutsideLegalRange)
        } else {
            None
        };
        match err {
            Some(e) => {
                st.deferred.get_or_insert(e);
                false
            }
            None => !st.done,
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        let mut st = self.state.lock();
        if !self.check_key(&mut st, key) {
            return;
        }
        let limit = self.db.limits.max_value_bytes;
        if value.len() > limit {
            st.deferred.get_or_insert(KvError::ValueTooLarge { size: value.len(), limit });
            return;
        }
        st.size += key.len() + value.len() + 2 * key.len() + 1;
        st.push_pending(key, PointOp::Set(value.to_vec()));
    }

    /// Removes `key`.
    pub fn clear(&self, key: &[u8]) {
        let mut st = self.state.lock();
        if !self.check_key(&mut st, key) {
            return;
        }
        st.size += 2 * (2 * key.len() + 1);
        st.push_pending(key, PointOp::Clear);
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) {
        let mut st = self.state.lock();
        if st.done {
            return;
        }
        if begin > end {
            st.deferred.get_or_insert(KvError::InvertedRange);
            return;
        }
        if begin.first() == Some(&0xff) {
            st.deferred.get_or_insert(KvError::KeyOutsideLegalRange);
            return;
        }
        let limit = self.db.limits.max_key_bytes;
        let (begin, end) = (clamp_bound(begin.to_vec(), limit), clamp_bound(end.to_vec(), limit));
        st.size += 2 * (begin.len() + end.len());
        if begin == end {
            return;
        }
        st.flush_pending();
        let doomed: Vec<Vec<u8>> = st
            .writes
            .range::<[u8], _>((Bound::Included(begin.as_slice()), Bound::Excluded(end.as_slice())))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            st.writes.remove(&k);
        }
        let mut cleared = std::mem::take(&mut st.cleared);
        cleared.push((begin, end));
        st.cleared = coalesce(cleared);
    }

    /// Adds `param` (little-endian) to the value of `key` at commit time, without a read conflict.
    pub fn atomic_add(&self, key: &[u8], param: &[u8]) {
        let mut st = self.state.lock();
        if !self.check_key(&mut st, key) {
            return;
        }
        st.size += key.len() + param.len() + 2 * key.len() + 1;
        st.flush_pending();
        let cleared = in_ranges(&st.cleared, key);
        let op = match st.writes.remove(key) {
            Some(PointOp::Set(v)) => PointOp::Set(resolve_add(Some(v), &[param.to_vec()])),
            Some(PointOp::Clear) => PointOp::Set(resolve_add(None, &[param.to_vec()])),
            Some(PointOp::Add(mut ps)) => {
                ps.push(param.to_vec());
                PointOp::Add(ps)
            }
            None if cleared => PointOp::Set(resolve_add(None, &[param.to_vec()])),
            None => PointOp::Add(vec![param.to_vec()]),
        };
        st.writes.insert(key.to_vec(), op);
    }

    /// The transaction's size as FoundationDB accounts it: mutation parameters plus the bounds of
    /// read and write conflict ranges.
    pub fn approximate_size(&self) -> usize {
        self.state.lock().size
    }

    /// Commits: checks limits and conflicts, then applies the writes durably.
    pub fn commit(&self) -> Result<(), KvError> {
        let mut st = self.state.lock();
        if st.done {
            return Err(KvError::TransactionCancelled);
        }
        st.done = true;
        if let Some(e) = st.deferred.take() {
            return Err(e);
        }
        let limit = self.db.limits.max_txn_bytes;
        if st.size > limit {
            return Err(KvError::TransactionTooLarge { size: st.size, limit });
        }
        let read = st.read.take();
        if let Some(view) = &read {
            let lifetime = self.db.limits.txn_lifetime;
            if view.started.elapsed() > lifetime {
                return Err(KvError::TransactionTooOld { lifetime_ms: lifetime.as_millis() as u64 });
            }
        }
        let batch = WriteBatch { cleared: std::mem::take(&mut st.cleared), ops: st.take_ops() };
        if batch.is_empty() {
            return Ok(());
        }
        let reads = std::mem::take(&mut st.read_conflicts);
        drop(st);
        #[cfg(test)]
        let faults = self.db.faults();
        #[cfg(test)]
        if let Some(e) = faults.as_ref().and_then(|f| f.before_commit()) {
            return Err(e);
        }
        self.db.commit_batch(read, reads, batch)?;
        // Applied and durable, yet reported unknown: what the retry loop's idempotent bodies and
        // the checkpoints must absorb.
        #[cfg(test)]
        if faults.is_some_and(|f| f.after_commit()) {
            return Err(KvError::CommitUnknownResult);
        }
        Ok(())
    }

    /// The fault handle of this transaction's database.
    #[cfg(test)]
    pub fn faults(&self) -> Option<Arc<super::faults::Faults>> {
        self.db.faults()
    }

    /// Abandons the transaction: further operations fail with `transaction_cancelled`.
    pub fn cancel(&self) {
        let mut st = self.state.lock();
        st.done = true;
        st.read = None;
    }
}

/// A transaction's writes within one read range, copied out of its state so that the read merges
/// them without holding the transaction's lock.
struct Overlay {
    /// Point writes with keys in the range.
    writes: BTreeMap<Vec<u8>, PointOp>,
    /// The cleared ranges that meet the range (disjoint, ascending).
    cleared: Ranges,
}

impl Overlay {
    /// The writes of `st` (pending ones already merged) within `[begin, end)`.
    fn within(st: &TxnState, begin: &[u8], end: &[u8]) -> Self {
        let writes = st
            .writes
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, op)| (k.clone(), op.clone()))
            .collect();
        let cleared = st.cleared.iter().filter(|(b, e)| b.as_slice() < end && e.as_slice() > begin).cloned().collect();
        Self { writes, cleared }
    }
}

/// Reads `[begin, end)` from the snapshot in chunks and merges the transaction's point writes and
/// cleared ranges over it. Returns the pairs and whether the limit cut the result short.
fn merged_range(
    st: &Overlay,
    snap: &dyn EngineSnapshot,
    begin: &[u8],
    end: &[u8],
    reverse: bool,
    limit: usize,
) -> Result<(Vec<KeyValue>, bool), KvError> {
    let mut out: Vec<KeyValue> = Vec::new();
    let (mut lo, mut hi) = (begin.to_vec(), end.to_vec());
    loop {
        let fetch = if limit == 0 { 0 } else { (limit - out.len()) + 16 };
        let items = snap.range(&lo, &hi, reverse, fetch)?;
        let exhausted = fetch == 0 || items.len() < fetch;
        // The key span these items cover completely.
        let (seg_lo, seg_hi) = match (exhausted, items.last()) {
            (false, Some((k, _))) if !reverse => (lo.clone(), key_after(k)),
            (false, Some((k, _))) => (k.clone(), hi.clone()),
            _ => (lo.clone(), hi.clone()),
        };
        let ops = st.writes.range::<[u8], _>((Bound::Included(seg_lo.as_slice()), Bound::Excluded(seg_hi.as_slice())));
        let ops: Vec<(&Vec<u8>, &PointOp)> = if reverse { ops.rev().collect() } else { ops.collect() };
        let mut items_it = items.into_iter().peekable();
        let mut ops_it = ops.into_iter().peekable();
        loop {
            if limit != 0 && out.len() >= limit {
                return Ok((out, true));
            }
            let next_item = items_it.peek().map(|(k, _)| k.as_slice());
            let next_op = ops_it.peek().map(|(k, _)| k.as_slice());
            let take_op = match (next_item, next_op) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(i), Some(o)) => {
                    if reverse {
                        o >= i
                    } else {
                        o <= i
                    }
                }
            };
            if take_op {
                let Some((k, op)) = ops_it.next() else { break };
                let base = match items_it.peek() {
                    Some((ik, _)) if ik == k => items_it.next().map(|(_, v)| v),
                    _ => None,
                };
                match op {
                    PointOp::Set(v) => out.push(KeyValue { key: k.clone(), value: v.clone() }),
                    PointOp::Clear => {}
                    PointOp::Add(ps) => out.push(KeyValue { key: k.clone(), value: resolve_add(base, ps) }),
                }
            } else {
                let Some((key, value)) = items_it.next() else { break };
                if !in_ranges(&st.cleared, &key) {
                    out.push(KeyValue { key, value });
                }
            }
        }
        if exhausted {
            return Ok((out, false));
        }
        if reverse {
            hi = seg_lo;
        } else {
            lo = seg_hi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::kv::engine::Engine;

    fn memory_db() -> Arc<LocalDb> {
        LocalDb::new(Box::<crate::storage::kv::memory::MemoryEngine>::default() as Box<dyn Engine>, Limits::FDB)
    }

    #[test]
    fn size_matches_foundationdb_commit_accounting() {
        // FoundationDB's commit-time check: mutation (key + value; clears count keys) plus conflict
        // ranges (begin + end). set("FOO", "Hello World") = (3 + 11) + (3 + 4) = 21 bytes.
        let tx = memory_db().create_trx();
        tx.set(b"FOO", b"Hello World");
        assert_eq!(tx.approximate_size(), 21);
        // clear("FOO"): mutation [FOO, FOO\0) = 7, write conflict range 7.
        tx.clear(b"FOO");
        assert_eq!(tx.approximate_size(), 21 + 14);
        // clear_range(a, b): mutation 2, conflict range 2.
        tx.clear_range(b"a", b"b");
        assert_eq!(tx.approximate_size(), 21 + 14 + 4);
        // A non-snapshot read of "k" adds the read conflict range [k, k\0): 3 bytes.
        tx.get(b"k", false).unwrap();
        assert_eq!(tx.approximate_size(), 21 + 14 + 4 + 3);
        // Snapshot reads add nothing.
        tx.get(b"k", true).unwrap();
        assert_eq!(tx.approximate_size(), 21 + 14 + 4 + 3);
    }

    #[test]
    fn a_point_read_outside_the_pending_writes_keys_leaves_them_pending_and_reads_right() {
        let db = memory_db();
        let tx = db.create_trx();
        tx.set(b"z", b"0");
        tx.commit().unwrap();
        let tx = db.create_trx();
        for key in [b"m".as_slice(), b"k", b"p", b"n"] {
            tx.set(key, key);
        }
        tx.clear(b"z");
        assert_eq!(tx.get(b"a", false).unwrap(), None);
        assert_eq!(tx.state.lock().pending.len(), 5, "a key below them: nothing merged");
        assert_eq!(tx.get(b"z", false).unwrap(), None, "the pending clear is seen");
        assert!(tx.state.lock().pending.is_empty(), "a key within them merges them first");
        tx.set(b"q", b"1");
        assert_eq!(tx.get(b"k", false).unwrap(), Some(b"k".to_vec()));
        assert_eq!(tx.get(b"q", false).unwrap(), Some(b"1".to_vec()));
    }

    /// An engine over memory whose snapshot reads each wait (up to 2 s) until two reads are in
    /// the engine at once, and record the most that ever were.
    #[derive(Default)]
    struct Rendezvous {
        inner: crate::storage::kv::memory::MemoryEngine,
        inside: Arc<(Mutex<(usize, usize)>, parking_lot::Condvar)>,
    }

    struct RendezvousSnapshot {
        inner: Arc<dyn EngineSnapshot>,
        inside: Arc<(Mutex<(usize, usize)>, parking_lot::Condvar)>,
    }

    impl RendezvousSnapshot {
        fn meet(&self) {
            let (lock, cvar) = &*self.inside;
            let mut g = lock.lock();
            g.0 += 1;
            g.1 = g.1.max(g.0);
            cvar.notify_all();
            let deadline = Instant::now() + std::time::Duration::from_secs(2);
            while g.1 < 2 && !cvar.wait_until(&mut g, deadline).timed_out() {}
            g.0 -= 1;
        }
    }

    impl EngineSnapshot for RendezvousSnapshot {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
            self.meet();
            self.inner.get(key)
        }
        fn range(
            &self,
            begin: &[u8],
            end: &[u8],
            reverse: bool,
            limit: usize,
        ) -> Result<crate::storage::kv::engine::Pairs, KvError> {
            self.meet();
            self.inner.range(begin, end, reverse, limit)
        }
    }

    impl Engine for Arc<Rendezvous> {
        fn snapshot(&self) -> Result<Arc<dyn EngineSnapshot>, KvError> {
            Ok(Arc::new(RendezvousSnapshot { inner: self.inner.snapshot()?, inside: Arc::clone(&self.inside) }))
        }
        fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
            self.inner.apply(batch)
        }
        fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
            self.inner.forget_range(begin, end)
        }
    }

    #[test]
    fn two_reads_of_one_transaction_on_two_threads_are_in_the_engine_at_once() {
        let engine = Arc::new(Rendezvous::default());
        let db = LocalDb::new(Box::new(Arc::clone(&engine)), Limits::FDB);
        let tx = Arc::new(db.create_trx());
        // A pending write within the range read: the range read merges it, outside the lock too.
        tx.set(b"b1", b"mine");
        let point = {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || tx.get(b"a", false).unwrap())
        };
        let range = tx.get_range(&RangeOption::new(b"b".to_vec(), b"c".to_vec()), false).unwrap();
        assert_eq!(point.join().unwrap(), None);
        assert_eq!(range, vec![KeyValue { key: b"b1".to_vec(), value: b"mine".to_vec() }]);
        assert_eq!(engine.inside.0.lock().1, 2, "the second read waited for the first one's lock");
        assert_eq!(tx.state.lock().read_conflicts.len(), 2, "both reads recorded their conflict range");
    }

    #[test]
    fn coalesce_merges_overlapping_and_adjacent_ranges() {
        let r = coalesce(vec![
            (b"c".to_vec(), b"e".to_vec()),
            (b"a".to_vec(), b"b".to_vec()),
            (b"b".to_vec(), b"c".to_vec()),
            (b"x".to_vec(), b"x".to_vec()),
        ]);
        assert_eq!(r, vec![(b"a".to_vec(), b"e".to_vec())]);
        assert!(in_ranges(&r, b"d"));
        assert!(!in_ranges(&r, b"e"));
        assert!(intersects(&r, b"d", b"z"));
        assert!(!intersects(&r, b"e", b"z"));
    }

    /// An engine over memory whose sync is slow and records, per finished sync, the commits
    /// applied before it started (keys are commit numbers).
    #[derive(Default)]
    struct SlowSync {
        inner: crate::storage::kv::memory::MemoryEngine,
        applied: Mutex<std::collections::BTreeSet<u64>>,
        covered: Mutex<Vec<std::collections::BTreeSet<u64>>>,
    }

    impl SlowSync {
        fn is_durable(&self, n: u64) -> bool {
            self.covered.lock().iter().any(|set| set.contains(&n))
        }
    }

    /// Shares one [`SlowSync`] between the database and the test.
    struct Shared(Arc<SlowSync>);

    impl Engine for Shared {
        fn snapshot(&self) -> Result<Arc<dyn crate::storage::kv::engine::EngineSnapshot>, KvError> {
            self.0.inner.snapshot()
        }
        fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
            self.0.inner.apply(batch)?;
            for (k, _) in &batch.ops {
                self.0.applied.lock().insert(u64::from_be_bytes(k[..8].try_into().unwrap()));
            }
            Ok(())
        }
        fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
            self.0.inner.forget_range(begin, end)
        }
        fn sync(&self) -> Result<(), KvError> {
            let before = self.0.applied.lock().clone();
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.0.covered.lock().push(before);
            Ok(())
        }
    }

    #[test]
    fn concurrent_commits_share_syncs_and_each_is_acknowledged_only_once_synced() {
        let engine = Arc::new(SlowSync::default());
        let db = LocalDb::new(Box::new(Shared(Arc::clone(&engine))), Limits::FDB);
        let threads: Vec<_> = (1..=16u64)
            .map(|n| {
                let (db, engine) = (Arc::clone(&db), Arc::clone(&engine));
                std::thread::spawn(move || {
                    let tx = db.create_trx();
                    tx.set(&n.to_be_bytes(), b"v");
                    tx.commit().unwrap();
                    assert!(engine.is_durable(n), "commit {n} acknowledged before a sync covered it");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let syncs = engine.covered.lock().len();
        assert!(syncs < 16, "16 concurrent commits took {syncs} syncs: no grouping");
    }
}
