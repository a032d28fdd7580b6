//! Embedded engine on fjall: an LSM tree with a write-ahead journal; batches are written to the
//! journal unsynced and [`Engine::sync`] fsyncs it for a whole group of commits.

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use super::database::EmbeddedOptions;
use super::engine::{Engine, EngineMemory, EngineSnapshot, Pairs, PointOp, WriteBatch, resolve_add};
use super::error::KvError;

fn engine_err(e: impl std::fmt::Display) -> KvError {
    KvError::Engine(e.to_string())
}

/// The fjall engine: one database directory, one keyspace.
pub struct FjallEngine {
    db: Database,
    ks: Keyspace,
}

impl FjallEngine {
    /// Opens or creates the store under `dir/fjall`. The block cache is `options.cache_bytes`
    /// (fjall allocates it as blocks are read). The memtable size only applies to a new store:
    /// fjall records a keyspace's options when it creates it and reopens it with those.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, KvError> {
        let path = dir.join("fjall");
        let threads = usize::try_from(options.engine_threads).unwrap_or(1).max(1);
        let db = Database::builder(&path).cache_size(options.cache_bytes).worker_threads(threads).open().map_err(
            |e| match e {
                fjall::Error::Locked => KvError::Locked(path.display().to_string()),
                other => engine_err(other),
            },
        )?;
        let create = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(options.memtable_bytes)
                .index_block_partitioning_policy(index_partitioning())
        };
        let ks = db.keyspace("kv", create).map_err(engine_err)?;
        Ok(Self { db, ks })
    }
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
        match self.ks.rotate_memtable() {
            Ok(_) => {
                let deadline = std::time::Instant::now() + CLOSE_FLUSH_WAIT;
                while self.ks.sealed_memtable_count() > 0 {
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

/// How long closing a store waits for its last memtable flush (a 64 MiB memtable flushes in well
/// under a second on a laptop disk).
const CLOSE_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct FjallSnapshot {
    snap: Snapshot,
    ks: Keyspace,
}

impl EngineSnapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.snap.get(&self.ks, key).map_err(engine_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, begin: &[u8], end: &[u8], reverse: bool, limit: usize) -> Result<Pairs, KvError> {
        let it = self.snap.range(&self.ks, begin..end);
        let take = if limit == 0 { usize::MAX } else { limit };
        let pair = |g: fjall::Guard| g.into_inner().map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine_err);
        if reverse { it.rev().take(take).map(pair).collect() } else { it.take(take).map(pair).collect() }
    }
}

impl Engine for FjallEngine {
    fn snapshot(&self) -> Result<Arc<dyn EngineSnapshot>, KvError> {
        Ok(Arc::new(FjallSnapshot { snap: self.db.snapshot(), ks: self.ks.clone() }))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
        // Commits are serialised by the caller, so reading the latest state here is race-free.
        let snap = self.db.snapshot();
        let mut wb = self.db.batch().durability(None);
        for (b, e) in &batch.cleared {
            for g in snap.range(&self.ks, b.as_slice()..e.as_slice()) {
                let key = g.key().map_err(engine_err)?;
                // Entries of one batch share a sequence number: never remove and insert one key.
                let rewritten = batch.ops.binary_search_by(|(k, _)| k.as_slice().cmp(&key)).is_ok();
                if !rewritten {
                    wb.remove(&self.ks, key);
                }
            }
        }
        for (k, op) in &batch.ops {
            match op {
                PointOp::Set(v) => wb.insert(&self.ks, k.as_slice(), v.as_slice()),
                PointOp::Clear => wb.remove(&self.ks, k.as_slice()),
                PointOp::Add(ps) => {
                    let cur = snap.get(&self.ks, k).map_err(engine_err)?.map(|v| v.to_vec());
                    wb.insert(&self.ks, k.as_slice(), resolve_add(cur, ps));
                }
            }
        }
        wb.commit().map_err(engine_err)
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
        let (versions, version_memtable_bytes) = {
            let history = self.ks.tree.get_version_history_lock();
            (count(history.len()), history.memtable_size_sum())
        };
        Some(EngineMemory {
            versions,
            version_memtable_bytes,
            write_buffer_bytes: self.db.write_buffer_size(),
            sealed_memtables: count(self.ks.sealed_memtable_count()),
            cache_bytes: self.db.cache_size(),
            pinned_filter_bytes: count(self.ks.tree.pinned_filter_size()),
            pinned_index_bytes: count(self.ks.tree.pinned_block_index_size()),
            tables: count(self.ks.table_count()),
            l0_tables: count(self.ks.l0_table_count()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of the files under `dir` (recursively).
    fn bytes_under(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap())
                    .map(|e| {
                        if e.file_type().unwrap().is_dir() {
                            bytes_under(&e.path())
                        } else {
                            e.metadata().unwrap().len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
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
    fn a_new_store_partitions_the_index_of_every_level_below_0_and_keeps_it_at_reopen() {
        use fjall::AbstractTree as _;
        let dir = tempfile::tempdir().unwrap();
        let policy = |e: &FjallEngine| e.ks.tree.tree_config().index_block_partitioning_policy.to_vec();
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        // Level 0 keeps the full index; levels 1 and deeper (the last entry holds for them) are
        // partitioned, so that a compaction does not keep an input block alive per output block.
        assert_eq!(policy(&engine), vec![false, true]);
        drop(engine);
        let engine = FjallEngine::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(policy(&engine), vec![false, true]);
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
