//! In-memory engine: a persistent ordered map, so snapshots are O(1) clones. For tests.

use std::sync::Arc;

use imbl::OrdMap;
use parking_lot::{Mutex, RwLock};

use super::engine::{Engine, EngineSnapshot, Pairs, PointOp, WriteBatch, resolve_add};
use super::error::KvError;

type Map = OrdMap<Vec<u8>, Vec<u8>>;

/// The in-memory engine.
#[derive(Default)]
pub struct MemoryEngine {
    map: RwLock<Map>,
    /// Held by whoever changes the map (a commit, a forget) from its copy to the new one, so that
    /// neither replaces the map with a copy missing the other's change.
    writer: Mutex<()>,
}

struct MemorySnapshot(Map);

impl EngineSnapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key).cloned())
    }

    fn range(&self, begin: &[u8], end: &[u8], reverse: bool, limit: usize) -> Result<Pairs, KvError> {
        let it = self.0.range(begin.to_vec()..end.to_vec());
        let take = if limit == 0 { usize::MAX } else { limit };
        let pairs = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse { it.rev().take(take).map(pairs).collect() } else { it.take(take).map(pairs).collect() })
    }
}

impl Engine for MemoryEngine {
    fn snapshot(&self) -> Result<Arc<dyn EngineSnapshot>, KvError> {
        Ok(Arc::new(MemorySnapshot(self.map.read().clone())))
    }

    fn apply(&self, batch: &WriteBatch) -> Result<(), KvError> {
        let _writer = self.writer.lock();
        let mut map = self.map.read().clone();
        for (b, e) in &batch.cleared {
            clear(&mut map, b, e);
        }
        for (k, op) in &batch.ops {
            match op {
                PointOp::Set(v) => {
                    map.insert(k.clone(), v.clone());
                }
                PointOp::Clear => {
                    map.remove(k);
                }
                PointOp::Add(ps) => {
                    let v = resolve_add(map.get(k).cloned(), ps);
                    map.insert(k.clone(), v);
                }
            }
        }
        *self.map.write() = map;
        Ok(())
    }

    /// Clears the range.
    fn forget_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        let _writer = self.writer.lock();
        let mut map = self.map.read().clone();
        clear(&mut map, begin, end);
        *self.map.write() = map;
        Ok(())
    }
}

fn clear(map: &mut Map, begin: &[u8], end: &[u8]) {
    if begin >= end {
        return;
    }
    let doomed: Vec<Vec<u8>> = map.range(begin.to_vec()..end.to_vec()).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        map.remove(&k);
    }
}
