//! Where a benchmark phase's memory went: a task samples the process's resident set and the
//! embedded engine's own counters ([`EngineMemory`]) at a fixed interval, and keeps the largest
//! value of each part. The kernel's peak mark (`VmHWM`) stays the phase's peak; the samples say
//! how much of it the engine's parts explain.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alloc::HeapAccount;
use crate::storage::kv::Database;
use crate::storage::kv::engine::EngineMemory;

/// How often a phase is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The allocator's account is read at every this many samples only (once a second): without
/// jemalloc, glibc's `mallinfo2` walks every free chunk of every arena under its lock, and with a
/// few hundred MiB of fragmented free heap it took 3.9 % of a backlog drain's samples at every
/// sample (`perf record` of `matyan bench ingest --records 3000000`), stalling the measured
/// pipeline's allocations.
const HEAP_SAMPLE_EVERY: u32 = 10;

/// The largest value each part reached during a phase (the parts need not peak together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryPeaks {
    /// Resident set at the first sample, KiB: what the phase started from (an allocator keeps
    /// what earlier phases freed).
    pub first_rss_kib: u64,
    /// Resident set, KiB, the largest sampled.
    pub rss_kib: u64,
    /// Bytes the allocator has handed out and not had back ([`crate::alloc::account`]; 0 where it
    /// keeps none), the largest sampled: the live heap.
    pub heap_in_use_bytes: u64,
    /// Bytes freed to the allocator and kept by it, the largest sampled: resident memory that
    /// holds nothing.
    pub heap_free_bytes: u64,
    /// The engine's parts, each its own largest.
    pub engine: EngineMemory,
}

impl MemoryPeaks {
    fn take(&mut self, rss_kib: u64, heap: Option<HeapAccount>, e: EngineMemory) {
        if self.first_rss_kib == 0 {
            self.first_rss_kib = rss_kib;
        }
        let m = &mut self.engine;
        self.rss_kib = self.rss_kib.max(rss_kib);
        if let Some(heap) = heap {
            self.heap_in_use_bytes = self.heap_in_use_bytes.max(heap.in_use_bytes);
            self.heap_free_bytes = self.heap_free_bytes.max(heap.free_bytes);
        }
        m.write_buffer_bytes = m.write_buffer_bytes.max(e.write_buffer_bytes);
        m.sealed_memtables = m.sealed_memtables.max(e.sealed_memtables);
        m.cache_bytes = m.cache_bytes.max(e.cache_bytes);
        m.pinned_filter_bytes = m.pinned_filter_bytes.max(e.pinned_filter_bytes);
        m.pinned_index_bytes = m.pinned_index_bytes.max(e.pinned_index_bytes);
        m.tables = m.tables.max(e.tables);
        m.l0_tables = m.l0_tables.max(e.l0_tables);
        m.versions = m.versions.max(e.versions);
        m.version_memtable_bytes = m.version_memtable_bytes.max(e.version_memtable_bytes);
    }
}

/// A running sampler; [`MemorySampler::stop`] ends it and answers the peaks.
pub struct MemorySampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<MemoryPeaks>,
}

impl MemorySampler {
    /// Starts sampling `db`'s engine (`None` when the backend reports nothing: then nothing runs).
    pub fn start(db: &Database) -> Option<Self> {
        db.engine_memory()?;
        let db = db.clone();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peaks = MemoryPeaks::default();
            for n in 0u32.. {
                if let (Some(rss), Some(e)) = (current_rss_kib(), db.engine_memory()) {
                    let heap = if n % HEAP_SAMPLE_EVERY == 0 { crate::alloc::account() } else { None };
                    peaks.take(rss, heap, e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = stopped.changed() => return peaks,
                }
            }
            peaks
        });
        Some(Self { stop, task })
    }

    /// Stops sampling: the peaks seen (`None` if the task failed).
    pub async fn stop(self) -> Option<MemoryPeaks> {
        let _ = self.stop.send(true);
        self.task.await.ok()
    }
}

/// Stops `sampler` if one runs: the peaks it saw.
pub async fn stop(sampler: Option<MemorySampler>) -> Option<MemoryPeaks> {
    match sampler {
        Some(s) => s.stop().await,
        None => None,
    }
}

/// Resident set of this process now, KiB.
fn current_rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// A KiB field of `/proc/self/status` (`field` with its colon, e.g. `VmHWM:`).
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_keep_each_part_s_own_largest_value() {
        let mut p = MemoryPeaks::default();
        let a = EngineMemory { write_buffer_bytes: 10, cache_bytes: 1, tables: 3, ..Default::default() };
        let b = EngineMemory { write_buffer_bytes: 2, cache_bytes: 7, pinned_index_bytes: 5, ..Default::default() };
        let h = |in_use_bytes, free_bytes| Some(HeapAccount { in_use_bytes, free_bytes });
        p.take(100, h(5, 1), a);
        p.take(90, h(3, 4), b);
        assert_eq!((p.heap_in_use_bytes, p.heap_free_bytes), (5, 4));
        assert_eq!((p.first_rss_kib, p.rss_kib), (100, 100));
        p.take(120, None, b);
        assert_eq!((p.first_rss_kib, p.rss_kib), (100, 120));
        assert_eq!((p.heap_in_use_bytes, p.heap_free_bytes), (5, 4), "a sample without the heap keeps its peaks");
        assert_eq!(
            p.engine,
            EngineMemory {
                write_buffer_bytes: 10,
                cache_bytes: 7,
                pinned_index_bytes: 5,
                tables: 3,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn a_fjall_store_reports_its_memtable_while_it_is_written() {
        use crate::storage::kv::{EmbeddedEngine, Limits};
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open_embedded(dir.path(), EmbeddedEngine::Fjall, Limits::FDB).unwrap();
        let sampler = MemorySampler::start(&db).expect("fjall reports its memory");
        let tx = db.create_trx().unwrap();
        tx.set(b"k", &[7u8; 4096]);
        tx.commit().await.unwrap();
        tokio::time::sleep(SAMPLE_EVERY * 2).await;
        let peaks = sampler.stop().await.unwrap();
        assert!(peaks.engine.write_buffer_bytes >= 4096, "{peaks:?}");
        assert!(peaks.rss_kib > 0);
    }
}
