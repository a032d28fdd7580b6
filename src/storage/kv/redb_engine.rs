//! Embedded engine on redb: a copy-on-write B-tree with MVCC read transactions and fsync'd commits.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use super::database::EmbeddedOptions;
use super::engine::{Engine, EngineSnapshot, Pairs, PointOp, WriteBatch, resolve_add};
use super::error::KvError;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

fn engine_err(e: impl std::fmt::Display) -> KvError {
    KvError::Engine(e.to_string())
}

/// The redb engine: one file, one table.
pub struct RedbEngine {
    db: Database,
    path: std::path::PathBuf,
}

impl RedbEngine {
    /// Opens or creates the store file `dir/matyan.redb`, with `options.cache_bytes` of page
    /// cache (redb's own default is 1 GiB).
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, KvError> {
        std::fs::create_dir_all(dir).map_err(engine_err)?;
        let path = dir.join("matyan.redb");
        let cache = usize::try_from(options.cache_bytes).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => KvError::Locked(path.display().to_string()),
            other => engine_err(other),
        })?;
        let tx = db.begin_write().map_err(engine_err)?;
        tx.open_table(TABLE).map_err(engine_err)?;
        tx.commit().map_err(engine_err)?;
        Ok(Self { db, path })
    }
}

type GuardPair = (redb::AccessGuard<'static, &'static [u8]>, redb::AccessGuard<'static, &'static [u8]>);

fn owned_pair(r: Result<GuardPair, redb::StorageError>) -> Result<(Vec<u8>, Vec<u8>), KvError> {
    r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())).map_err(engine_err)
}

struct RedbSnapshot(ReadOnlyTable<&'static [u8], &'static [u8]>);

impl EngineSnapshot for RedbSnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key).map_err(engine_err)?.map(|v| v.value().to_vec()))
    }

    fn range(&self, begin: &[u8], end: &[u8], reverse: bool, limit: usize) -> Result<Pairs, KvError> {
        let it = self.0.range::<&[u8]>(begin..end).map_err(engine_err)?;
        let take = if limit == 0 { usize::MAX } else { limit };
        if reverse { it.rev().take(take).map(owned_pair).collect() } else { it.take(take).map(owned_pair).collect() }
    }
}

impl Engine for RedbEngine {
    fn snapshot(&self) -> Result<Arc<dyn EngineSnapshot>, KvError> {
        let tx = self.db.begin_read().map_err(engine_err)?;
        Ok(Arc::new(RedbSnapshot(tx.open_table(TABLE).map_err(engine_err)?)))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
        let mut tx = self.db.begin_write().map_err(engine_err)?;
        // Not persisted until a later `Immediate` commit: `sync` makes one for a whole group.
        tx.set_durability(Durability::None).map_err(engine_err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(engine_err)?;
            for (b, e) in &batch.cleared {
                table.retain_in::<&[u8], _>(b.as_slice()..e.as_slice(), |_, _| false).map_err(engine_err)?;
            }
            for (k, op) in &batch.ops {
                match op {
                    PointOp::Set(v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(engine_err)?;
                    }
                    PointOp::Clear => {
                        table.remove(k.as_slice()).map_err(engine_err)?;
                    }
                    PointOp::Add(ps) => {
                        let cur = table.get(k.as_slice()).map_err(engine_err)?.map(|v| v.value().to_vec());
                        let v = resolve_add(cur, ps);
                        table.insert(k.as_slice(), v.as_slice()).map_err(engine_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(engine_err)
    }

    /// Clears the range in a write transaction of its own (redb runs one at a time, so it waits for
    /// a commit's), durable with the next synced commit.
    fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if begin >= end {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(engine_err)?;
        tx.set_durability(Durability::None).map_err(engine_err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(engine_err)?;
            table.retain_in::<&[u8], _>(begin..end, |_, _| false).map_err(engine_err)?;
        }
        tx.commit().map_err(engine_err)
    }

    fn sync(&self) -> Result<(), KvError> {
        let mut tx = self.db.begin_write().map_err(engine_err)?;
        tx.set_durability(Durability::Immediate).map_err(engine_err)?;
        tx.commit().map_err(engine_err)
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}
