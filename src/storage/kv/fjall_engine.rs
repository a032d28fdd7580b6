//! Embedded engine on fjall: an LSM tree with a write-ahead journal; batches are written to the
//! journal unsynced and [`Engine::sync`] fsyncs it for a whole group of commits.
//!
//! One keyspace (`kv`) holds every key, except the prefixes kept apart ([`Engine::keep_apart`]):
//! each of those has a keyspace of its own, named `apart:` and the prefix in hex, so fjall
//! recovers the routing with the keyspaces at the next open. A batch spanning keyspaces is
//! written atomically (one journal), and a snapshot reads every keyspace at one sequence number.
//! A forgotten range ([`Engine::forget_range`]) loses the tables lying wholly inside it, outside
//! the commit order, with no read and no tombstone.

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};
use parking_lot::RwLock;

use super::database::EmbeddedOptions;
use super::engine::{Engine, EngineMemory, EngineSnapshot, Pairs, PointOp, WriteBatch, resolve_add};
use super::error::KvError;
use super::prefix_routes::{Route, Routes};

fn engine_err(e: impl std::fmt::Display) -> KvError {
    KvError::Engine(e.to_string())
}

/// The start of the name of a keyspace holding a prefix kept apart; the prefix follows in hex.
const APART: &str = "apart:";

/// The longest prefix kept apart: its keyspace's name (`apart:` and two hex digits a byte) must
/// fit fjall's 255 bytes.
const MAX_APART_PREFIX: usize = (255 - APART.len()) / 2;

/// The fjall engine: one database directory, the main keyspace and one per prefix kept apart.
pub struct FjallEngine {
    db: Database,
    ks: Keyspace,
    /// Replaced whole when a prefix is kept apart: a snapshot reads with the routes it was taken
    /// with.
    routes: RwLock<Arc<Routes<Keyspace>>>,
    /// Prefixes refused since the store was opened: asked again (the queue asks at every open),
    /// they are refused at once, without looking for their keys again. Looking means reading the
    /// main keyspace from the prefix on under the commit order, through every tombstone a trimmed
    /// queue left there.
    refused: parking_lot::Mutex<std::collections::BTreeSet<Vec<u8>>>,
    memtable_bytes: u64,
}

impl FjallEngine {
    /// Opens or creates the store under `dir/fjall`. The block cache is `options.cache_bytes`
    /// (fjall allocates it as blocks are read). The memtable size only applies to a new store:
    /// fjall records a keyspace's options when it creates it and reopens it with those.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, KvError> {
        let path = dir.join("fjall");
        let threads = usize::try_from(options.engine_threads).unwrap_or(1).max(1);
        let db = Database::builder(&path)
            .cache_size(options.cache_bytes)
            .worker_threads(threads)
            // fjall panics below its floor; the config holds it there.
            .max_journaling_size(options.journal_bytes.max(super::MIN_JOURNAL_BYTES))
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => KvError::Locked(path.display().to_string()),
                other => engine_err(other),
            })?;
        let memtable_bytes = options.memtable_bytes;
        let ks = db.keyspace("kv", || keyspace_options(memtable_bytes)).map_err(engine_err)?;
        let mut routes = Routes::default();
        for name in db.list_keyspace_names() {
            let Some(hex_prefix) = name.strip_prefix(APART) else { continue };
            let corrupt = || KvError::Engine(format!("keyspace {name:?} does not name a prefix"));
            let prefix = hex::decode(hex_prefix).map_err(|_| corrupt())?;
            let apart = db.keyspace(&name, || apart_keyspace_options(memtable_bytes)).map_err(engine_err)?;
            let route = Route::new(&prefix, apart).ok_or_else(corrupt)?;
            routes.add(route).map_err(|_| corrupt())?;
        }
        Ok(Self { db, ks, routes: RwLock::new(Arc::new(routes)), refused: Default::default(), memtable_bytes })
    }

    /// The main keyspace and every keyspace kept apart.
    fn keyspaces(&self) -> Vec<Keyspace> {
        let routes = Arc::clone(&self.routes.read());
        std::iter::once(self.ks.clone()).chain(routes.iter().map(|r| r.tree().clone())).collect()
    }
}

/// The options of a new keyspace: the memtable size and the index and filter partitioning
/// policies.
fn keyspace_options(memtable_bytes: u64) -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(memtable_bytes)
        .index_block_partitioning_policy(index_partitioning())
        .filter_block_partitioning_policy(filter_partitioning())
}

impl Drop for FjallEngine {
    /// Flushes the active memtable into a table file on a clean close, so that the journal holds
    /// nothing to replay: an unflushed journal of 85 MB took 4–8 s to replay at the next open
    /// (1M small writes then a clean stop), a flushed one takes milliseconds. A crash skips this
    /// and recovers from the journal as before.
    ///
    /// The wait is bounded ([`CLOSE_FLUSH_WAIT`]): a flush that cannot finish (its directory was
    /// removed, the disk is full) only costs the next open a replay. fjall's own
    /// `rotate_memtable_and_wait` waits without a bound, and hung a process whose store directory
    /// was deleted before the last handle dropped.
    fn drop(&mut self) {
        let keyspaces = self.keyspaces();
        let rotated: Result<Vec<_>, _> = keyspaces.iter().map(Keyspace::rotate_memtable).collect();
        match rotated {
            Ok(_) => {
                let deadline = std::time::Instant::now() + CLOSE_FLUSH_WAIT;
                while keyspaces.iter().any(|ks| ks.sealed_memtable_count() > 0) {
                    // A removed directory fails every flush: do not wait for one.
                    if std::time::Instant::now() >= deadline || !self.ks.path().exists() {
                        tracing::warn!(
                            "the memtable was not flushed at close in time; the next open replays the journal"
                        );
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not flush the memtable at close; the next open replays the journal")
            }
        }
    }
}

/// The options of a new keyspace for a prefix kept apart. Its keys are written in key order, read
/// in ranges and forgotten from the front ([`Engine::forget_range`] drops its tables whole), as a
/// queue partition's records are: its tables are moved down the levels without being rewritten
/// (the leveled strategy moves tables whose keys overlap no other's), so they are compressed when
/// flushed, not at a deeper level; they get no bloom filter (no point read looks there) and a
/// partitioned index at every level (a flushed table keeps what it was written with wherever it is
/// moved, and a full index is held in memory whole while the table lives). Its memtable is a
/// quarter of the others': a store keeps one per queue partition (7 for `matyan serve`'s two
/// topics), where before it kept one for all of them.
fn apart_keyspace_options(memtable_bytes: u64) -> KeyspaceCreateOptions {
    use fjall::config::{CompressionPolicy, FilterPolicy, PartitioningPolicy};
    KeyspaceCreateOptions::default()
        .max_memtable_size((memtable_bytes / 4).max(MIN_APART_MEMTABLE_BYTES))
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::Lz4))
        .filter_policy(FilterPolicy::disabled())
        .index_block_partitioning_policy(PartitioningPolicy::all(true))
}

/// The smallest memtable of a keyspace kept apart.
const MIN_APART_MEMTABLE_BYTES: u64 = 1 << 20;

/// Which levels' tables get a partitioned block index (level 0 first; the last entry holds for
/// every deeper level): all but level 0. Only a new store takes it; fjall records a keyspace's
/// policies when it creates it.
///
/// A table written with a full index keeps every data block's last key until the table is
/// finished, and in a compaction that key is a slice of the block it was read from: each output
/// block keeps one whole input block alive, so a compaction writing a 64 MiB table holds about
/// 64 MiB (fjall's default is a full index down to level 2). A partitioned index writes its
/// handles out every few kilobytes and keeps one key per partition. Measured (`matyan bench ingest
/// --records 10000000 --layout chunked`, memory rows): the live phase's heap at its largest was
/// 364 MiB with fjall's default and 159 MiB with every level partitioned; at 3M records, 167 MiB
/// with a full index and 16 MiB tables, 98 MiB with this policy. Reads pay one more block lookup
/// per table they seek (`matyan bench query --runs 1000 --layout chunked`, run search with
/// `lr > 0.01`: 22.7 / 23.2 ms with fjall's default, 23.8–26.3 ms with this policy, in runs on the
/// same store). docs/operations.md has the process's figures. Level 0's tables come from memtable
/// flushes, whose keys are the memtable's own, so they keep the full index and its one lookup.
fn index_partitioning() -> fjall::config::PartitioningPolicy {
    fjall::config::PartitioningPolicy::new([false, true])
}

/// Which levels' tables get a partitioned bloom filter (level 0 first; the last entry holds for
/// every deeper level): all but level 0, whose filters fjall pins whole. Only a new store takes
/// it; fjall records a keyspace's policies when it creates it.
///
/// A point read checks the filter of each table it might find the key in. With a full filter
/// that is one block per table, about 6 % of it (5 MB for an 81 MB table), read whole through the
/// block cache for every read that misses it; quick_cache also refuses a block above 80 % of one
/// shard (4 × cores shards), so on a many-core machine no cache size keeps such a filter. A
/// partitioned filter is cut into blocks of about 4 KiB under a small index that the table pins
/// (one key and handle per partition, outside the block cache); a read loads the one partition
/// that can hold its key. Measured (`nice -n 10 matyan bench query --layout key_per_step --reps 3
/// --dir DIR`, a fresh 1,000-run store of 1.4 GB per binary, two rounds alternated on a loaded
/// 2-core machine): metric search `loss` p=500 (3M point reads) went from past the 120 s
/// `query.max_request_time_ms` to 9.6 / 10.0 s at the 64 MiB default cache, and 10.7 / 10.2 →
/// 10.0 / 10.5 s at 256 MiB; `strace` of that search saw no read above 16 KiB, where full filters
/// had read blocks of 5 MB. The store grew 1,606 → 1,623 MiB (`du`); chunked stores' queries
/// and `matyan bench storage` writes did not change beyond their noise. The partition index is
/// not in [`EngineMemory::pinned_filter_bytes`] (lsm-tree does not report it): one key and
/// handle per 4 KiB of filter, about 1 MB for that store's ~85 MB of filters (estimated).
fn filter_partitioning() -> fjall::config::PartitioningPolicy {
    fjall::config::PartitioningPolicy::new([false, true])
}

/// How long closing a store waits for its last memtable flush (a 64 MiB memtable flushes in well
/// under a second on a laptop disk).
const CLOSE_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct FjallSnapshot {
    snap: Snapshot,
    ks: Keyspace,
    routes: Arc<Routes<Keyspace>>,
}

impl FjallSnapshot {
    fn keyspace_of(&self, key: &[u8]) -> &Keyspace {
        self.routes.tree_of(key).unwrap_or(&self.ks)
    }
}

impl EngineSnapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.snap.get(self.keyspace_of(key), key).map_err(engine_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, begin: &[u8], end: &[u8], reverse: bool, limit: usize) -> Result<Pairs, KvError> {
        let take = if limit == 0 { usize::MAX } else { limit };
        let pair = |g: fjall::Guard| g.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine_err);
        let mut pieces = self.routes.pieces(begin, end);
        if reverse {
            pieces.reverse();
        }
        let mut out = Vec::new();
        for piece in pieces {
            let left = take - out.len();
            if left == 0 {
                break;
            }
            let it = self.snap.range(piece.tree.unwrap_or(&self.ks), piece.begin..piece.end);
            let got: Result<Pairs, KvError> =
                if reverse { it.rev().take(left).map(pair).collect() } else { it.take(left).map(pair).collect() };
            let got = got?;
            if out.is_empty() {
                out = got;
            } else {
                out.extend(got);
            }
        }
        Ok(out)
    }
}

impl Engine for FjallEngine {
    fn snapshot(&self) -> Result<Arc<dyn EngineSnapshot>, KvError> {
        let routes = Arc::clone(&self.routes.read());
        Ok(Arc::new(FjallSnapshot { snap: self.db.snapshot(), ks: self.ks.clone(), routes }))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
        // FoundationDB allows the empty key; fjall asserts against it when a batch is built, which
        // would panic the committing task. Refuse the batch before anything is written (the ops are
        // in key order: an empty key comes first).
        if batch.ops.first().is_some_and(|(k, _)| k.is_empty()) {
            return Err(KvError::Engine("the embedded store cannot hold the empty key".into()));
        }
        // Commits are serialised by the caller, so reading the latest state here is race-free.
        let snap = self.db.snapshot();
        let routes = Arc::clone(&self.routes.read());
        let keyspace_of = |key: &[u8]| routes.tree_of(key).unwrap_or(&self.ks);
        let mut wb = self.db.batch().durability(None);
        for (b, e) in &batch.cleared {
            for piece in routes.pieces(b, e) {
                let ks = piece.tree.unwrap_or(&self.ks);
                for g in snap.range(ks, piece.begin..piece.end) {
                    let key = g.key().map_err(engine_err)?;
                    // Entries of one batch share a sequence number: never remove and insert one key.
                    let rewritten = batch.ops.binary_search_by(|(k, _)| k.as_slice().cmp(&key)).is_ok();
                    if !rewritten {
                        wb.remove(ks, key);
                    }
                }
            }
        }
        for (k, op) in &batch.ops {
            let ks = keyspace_of(k);
            match op {
                PointOp::Set(v) => wb.insert(ks, k.as_slice(), v.as_slice()),
                PointOp::Clear => wb.remove(ks, k.as_slice()),
                PointOp::Add(ps) => {
                    let cur = snap.get(ks, k).map_err(engine_err)?.map(|v| v.to_vec());
                    wb.insert(ks, k.as_slice(), resolve_add(cur, ps));
                }
            }
        }
        wb.commit().map_err(engine_err)
    }

    /// Creates the prefix's keyspace when the main keyspace holds none of its keys (a store
    /// created before keeps them there: moving them is not this call's job). The caller
    /// serialises this with [`Engine::apply`], so no commit writes under the prefix meanwhile.
    fn keep_apart(&self, prefix: &[u8]) -> Result<bool, KvError> {
        if let Some(settled) = self.kept_apart(prefix) {
            return Ok(settled);
        }
        let mut routes = self.routes.write();
        if routes.iter().any(|r| r.prefix() == prefix) {
            return Ok(true);
        }
        let refuse = || {
            self.refused.lock().insert(prefix.to_vec());
            Ok(false)
        };
        let Some(probe) = Route::new(prefix, ()) else { return refuse() };
        if prefix.len() > MAX_APART_PREFIX || routes.overlaps(&probe) {
            return refuse();
        }
        if self.ks.range(probe.prefix()..probe.end()).next().is_some() {
            return refuse();
        }
        let name = format!("{APART}{}", hex::encode(prefix));
        let apart = self.db.keyspace(&name, || apart_keyspace_options(self.memtable_bytes)).map_err(engine_err)?;
        let mut next = Routes::clone(&routes);
        next.add(probe.with_tree(apart))
            .map_err(|_| KvError::Engine(format!("prefix {} overlaps another", hex::encode(prefix))))?;
        *routes = Arc::new(next);
        Ok(true)
    }

    fn kept_apart(&self, prefix: &[u8]) -> Option<bool> {
        if self.routes.read().iter().any(|r| r.prefix() == prefix) {
            return Some(true);
        }
        self.refused.lock().contains(prefix).then_some(false)
    }

    /// Drops the tables lying wholly inside the range, in every keyspace it crosses, without the
    /// commit order (fjall orders a drop with its own writes, and a snapshot taken before still
    /// reads what it drops).
    fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        let routes = Arc::clone(&self.routes.read());
        for piece in routes.pieces(begin, end) {
            piece.tree.unwrap_or(&self.ks).drop_tables_within(piece.begin, piece.end).map_err(engine_err)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), KvError> {
        self.db.persist(PersistMode::SyncData).map_err(engine_err)
    }

    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn memory(&self) -> Option<EngineMemory> {
        use fjall::AbstractTree as _;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let mut memory = EngineMemory {
            write_buffer_bytes: self.db.write_buffer_size(),
            cache_bytes: self.db.cache_size(),
            ..EngineMemory::default()
        };
        for ks in self.keyspaces() {
            let history = ks.tree.get_version_history_lock();
            memory.versions += count(history.len());
            memory.version_memtable_bytes += history.memtable_size_sum();
            drop(history);
            memory.sealed_memtables += count(ks.sealed_memtable_count());
            memory.pinned_filter_bytes += count(ks.tree.pinned_filter_size());
            memory.pinned_index_bytes += count(ks.tree.pinned_block_index_size());
            memory.tables += count(ks.table_count());
            memory.l0_tables += count(ks.l0_table_count());
        }
        Some(memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the files under `dir`.
    fn bytes_under(dir: &Path) -> u64 {
        crate::bench::disk::bytes_under(dir, crate::bench::disk::apparent)
    }

    #[test]
    fn a_store_closed_cleanly_leaves_no_journal_to_replay_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let batch = WriteBatch {
            ops: (0..10_000u32).map(|i| (i.to_be_bytes().to_vec(), PointOp::Set(vec![7; 60]))).collect(),
            ..WriteBatch::default()
        };
        engine.apply(&batch).unwrap();
        engine.sync().unwrap();
        let tables = dir.path().join("fjall/keyspaces");
        assert!(bytes_under(&tables) < 100_000, "while open, the writes are only in the memtable and the journal");
        drop(engine);
        // The next open replays only what no table holds: with the memtable flushed, nothing (an 85 MB
        // journal took 4–8 s to replay before).
        assert!(bytes_under(&tables) > 300_000, "a clean close writes the memtable into a table");
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let snap = engine.snapshot().unwrap();
        assert_eq!(snap.get(&9_999u32.to_be_bytes()).unwrap(), Some(vec![7; 60]));
        assert_eq!(snap.range(&[], &[0xff], false, 0).unwrap().len(), 10_000);
    }

    #[test]
    fn a_store_created_with_a_small_memtable_flushes_it_into_tables_while_open() {
        // 3 MB of writes: a 16 MiB memtable (the default) holds them, a 1 MiB one is flushed.
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions { memtable_bytes: 1 << 20, ..EmbeddedOptions::default() };
        let engine = FjallEngine::open(dir.path(), options).unwrap();
        for batch in 0..30u32 {
            let ops = (0..1_000u32).map(|i| ((batch * 1_000 + i).to_be_bytes().to_vec(), PointOp::Set(vec![7; 100])));
            engine.apply(&WriteBatch { ops: ops.collect(), ..WriteBatch::default() }).unwrap();
        }
        let tables = dir.path().join("fjall/keyspaces");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while bytes_under(&tables) < 1_000_000 {
            assert!(std::time::Instant::now() < deadline, "no memtable was flushed while open");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(engine.snapshot().unwrap().range(&[], &[0xff], false, 0).unwrap().len(), 30_000);
    }

    #[test]
    fn a_new_store_partitions_index_and_filter_below_level_0_and_tunes_keyspaces_kept_apart_across_reopens() {
        use fjall::AbstractTree as _;
        let dir = tempfile::tempdir().unwrap();
        let policies = |e: &FjallEngine| {
            let config = e.ks.tree.tree_config();
            (config.index_block_partitioning_policy.to_vec(), config.filter_block_partitioning_policy.to_vec())
        };
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        // Level 0 keeps the full index and filter; levels 1 and deeper (the last entry holds for
        // them) are partitioned, so that a compaction does not keep an input block alive per
        // output block and a point read loads one small filter partition, not a table's filter.
        let want = (vec![false, true], vec![false, true]);
        assert_eq!(policies(&engine), want);
        assert!(engine.keep_apart(b"q").unwrap());
        drop(engine);
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(policies(&engine), want);
        // A keyspace kept apart, written in key order and dropped table by table, compresses what it
        // flushes, builds no bloom filter and partitions its index at every level, across reopens.
        let routes = Arc::clone(&engine.routes.read());
        let apart = routes.iter().next().unwrap().tree().tree.tree_config();
        assert_eq!(
            apart.data_block_compression_policy,
            fjall::config::CompressionPolicy::all(fjall::CompressionType::Lz4)
        );
        assert_eq!(apart.filter_policy, fjall::config::FilterPolicy::disabled());
        assert_eq!(apart.index_block_partitioning_policy.to_vec(), vec![true]);
    }

    /// Keys over a small alphabet, so that random ranges often cross the kept-apart prefixes (never
    /// empty: fjall refuses an empty key).
    fn random_key(rng: &mut impl rand::Rng) -> Vec<u8> {
        let alphabet = [0x00u8, b'a', b'b', b'q', 0xff];
        (0..rng.random_range(1..4)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
    }

    fn random_range(rng: &mut impl rand::Rng) -> (Vec<u8>, Vec<u8>) {
        let (a, b) = (random_key(rng), random_key(rng));
        if a <= b { (a, b) } else { (b, a) }
    }

    #[test]
    fn keys_kept_apart_are_read_and_written_as_if_they_were_not() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let model = super::super::memory::MemoryEngine::default();
        assert!(engine.keep_apart(b"q").unwrap());
        assert!(engine.keep_apart(b"a\x00").unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for round in 0..300 {
            let mut batch = WriteBatch::default();
            for _ in 0..rng.random_range(0..3) {
                batch.cleared.push(random_range(&mut rng));
            }
            let mut ops = std::collections::BTreeMap::new();
            for _ in 0..rng.random_range(0..8) {
                let key = random_key(&mut rng);
                // The transaction layer turns an add to a key it cleared into a set.
                let cleared = batch.cleared.iter().any(|(b, e)| b <= &key && &key < e);
                let op = match rng.random_range(0..4) {
                    0 => PointOp::Clear,
                    1 if !cleared => PointOp::Add(vec![vec![1, 0, 0, 0]]),
                    _ => PointOp::Set(vec![round as u8; rng.random_range(0..5)]),
                };
                ops.insert(key, op);
            }
            batch.ops = ops.into_iter().collect();
            engine.apply(&batch).unwrap();
            model.apply(&batch).unwrap();
            let (got, want) = (engine.snapshot().unwrap(), model.snapshot().unwrap());
            for _ in 0..10 {
                let key = random_key(&mut rng);
                assert_eq!(got.get(&key).unwrap(), want.get(&key).unwrap(), "get {key:?} at round {round}");
                let (b, e) = random_range(&mut rng);
                let (reverse, limit) = (rng.random_bool(0.5), rng.random_range(0..4));
                assert_eq!(
                    got.range(&b, &e, reverse, limit).unwrap(),
                    want.range(&b, &e, reverse, limit).unwrap(),
                    "range {b:?}..{e:?} reverse {reverse} limit {limit} at round {round}"
                );
            }
        }
    }

    #[test]
    fn a_prefix_kept_apart_keeps_its_own_keyspace_and_keys_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(engine.kept_apart(b"q"), None, "not settled before it is asked for");
        assert!(engine.keep_apart(b"q").unwrap());
        assert_eq!(engine.kept_apart(b"q"), Some(true));
        assert!(engine.keep_apart(b"q").unwrap(), "asking again is a no-op");
        let ops = vec![(b"a".to_vec(), PointOp::Set(b"1".to_vec())), (b"q1".to_vec(), PointOp::Set(b"2".to_vec()))];
        engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap();
        let apart = engine.routes.read().iter().next().unwrap().tree().clone();
        assert_eq!(apart.approximate_len(), 1, "the prefix's key is in its own keyspace");
        assert_eq!(engine.ks.approximate_len(), 1);
        drop((apart, engine));
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let names: Vec<String> = engine.db.list_keyspace_names().iter().map(|n| n.to_string()).collect();
        assert!(names.contains(&"apart:71".to_owned()), "{names:?}");
        assert_eq!(engine.routes.read().iter().map(|r| r.prefix().to_vec()).collect::<Vec<_>>(), vec![b"q".to_vec()]);
        let snap = engine.snapshot().unwrap();
        assert_eq!(snap.get(b"q1").unwrap(), Some(b"2".to_vec()));
        assert_eq!(snap.range(b"", b"\xff", false, 0).unwrap().len(), 2);
    }

    #[test]
    fn a_prefix_whose_keys_are_already_stored_stays_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let ops = vec![(b"q1".to_vec(), PointOp::Set(b"2".to_vec()))];
        engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap();
        assert!(!engine.keep_apart(b"q").unwrap(), "its key would be hidden");
        assert_eq!(engine.kept_apart(b"q"), Some(false), "a refusal is settled");
        assert!(!engine.keep_apart(b"").unwrap(), "an empty prefix would take every key");
        assert!(!engine.keep_apart(&[b'x'; 200]).unwrap(), "too long to name a keyspace");
        assert!(engine.keep_apart(b"r").unwrap());
        assert!(!engine.keep_apart(b"r\x01").unwrap(), "inside a prefix kept apart");
        assert_eq!(engine.snapshot().unwrap().get(b"q1").unwrap(), Some(b"2".to_vec()));
        // Refused once, refused until the store is opened again, even with its keys gone.
        let ops = vec![(b"q1".to_vec(), PointOp::Clear)];
        engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap();
        assert!(!engine.keep_apart(b"q").unwrap());
        drop(engine);
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert!(engine.keep_apart(b"q").unwrap(), "no key left under it at this open");
    }

    #[test]
    fn forgetting_a_range_kept_apart_drops_its_whole_tables_and_their_files_and_nothing_else() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        // Memtables of 1 MiB: 8 MB of writes make several tables.
        let options = EmbeddedOptions { memtable_bytes: 1 << 20, ..EmbeddedOptions::default() };
        let engine = FjallEngine::open(dir.path(), options).unwrap();
        assert!(engine.keep_apart(b"q").unwrap());
        let key = |i: u32| [b"q".as_slice(), &i.to_be_bytes()].concat();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let value = |i: u32, rng: &mut rand::rngs::StdRng| {
            let mut v = i.to_be_bytes().to_vec();
            v.extend((0..1000).map(|_| rng.random::<u8>()));
            v
        };
        let mut values = Vec::new();
        for batch in 0..80u32 {
            let ops: Vec<_> =
                (batch * 100..(batch + 1) * 100).map(|i| (key(i), PointOp::Set(value(i, &mut rng)))).collect();
            values.extend(ops.iter().map(|(_, op)| match op {
                PointOp::Set(v) => v.clone(),
                _ => unreachable!(),
            }));
            engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap();
        }
        let outside = vec![(b"a".to_vec(), PointOp::Set(b"kept".to_vec()))];
        engine.apply(&WriteBatch { ops: outside, ..WriteBatch::default() }).unwrap();
        let apart = engine.routes.read().iter().next().unwrap().tree().clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while apart.sealed_memtable_count() > 0 || apart.table_count() < 4 {
            assert!(std::time::Instant::now() < deadline, "the writes were not flushed into tables");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (tables, bytes) = (apart.table_count(), bytes_under(apart.path()));
        let before = engine.snapshot().unwrap();

        engine.forget_range(&key(0), &key(6_000)).unwrap();
        assert!(apart.table_count() < tables, "tables {tables} -> {}", apart.table_count());
        // Every key past the range and outside the keyspace is there; a forgotten one shows its
        // value or nothing; a snapshot taken before reads them all.
        let snap = engine.snapshot().unwrap();
        assert_eq!(snap.get(b"a").unwrap(), Some(b"kept".to_vec()));
        let left = snap.range(&key(0), &key(8_000), false, 0).unwrap();
        assert!(left.len() < 8_000, "some of the range went");
        for (k, v) in &left {
            let i = u32::from_be_bytes(k[1..].try_into().unwrap());
            assert_eq!(v, &values[i as usize]);
        }
        let kept: Vec<u32> = left.iter().map(|(k, _)| u32::from_be_bytes(k[1..].try_into().unwrap())).collect();
        assert!((6_000..8_000).all(|i| kept.binary_search(&i).is_ok()), "a key past the range went");
        assert_eq!(before.range(&key(0), &key(8_000), false, 0).unwrap().len(), 8_000);
        drop((before, snap));
        // Again over the same range, with no snapshot open: nothing more to drop, and the dropped
        // tables' files are gone with the last version holding them, which the old snapshot read.
        let now = apart.table_count();
        engine.forget_range(&key(0), &key(6_000)).unwrap();
        assert_eq!(apart.table_count(), now);
        assert!(bytes_under(apart.path()) < bytes * 3 / 4, "files {bytes} -> {} bytes", bytes_under(apart.path()));
    }

    #[test]
    fn a_batch_writing_the_empty_key_is_refused_whole_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let ops = vec![(Vec::new(), PointOp::Set(b"v".to_vec())), (b"k".to_vec(), PointOp::Set(b"v".to_vec()))];
        let err = engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap_err();
        assert!(err.to_string().contains("empty key"), "{err}");
        assert_eq!(engine.snapshot().unwrap().get(b"k").unwrap(), None, "nothing of the batch is written");
        let ops = vec![(b"k".to_vec(), PointOp::Set(b"v".to_vec()))];
        engine.apply(&WriteBatch { ops, ..WriteBatch::default() }).unwrap();
        assert_eq!(engine.snapshot().unwrap().get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_store_whose_directory_is_gone_still_closes() {
        // A temporary directory removed before the last handle drops (as tests and benchmarks do):
        // the close flush fails and the close gives up after its bounded wait instead of hanging.
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let batch = WriteBatch { ops: vec![(b"k".to_vec(), PointOp::Set(b"v".to_vec()))], ..WriteBatch::default() };
        engine.apply(&batch).unwrap();
        std::fs::remove_dir_all(dir.path()).unwrap();
        drop(engine);
    }
}
