//! Hands memory that the allocator holds free back to the operating system, at a fixed interval,
//! on one thread per process ([`crate::alloc::release_free`]).
//!
//! An embedded store frees a great deal in bursts and from the middle of the heap: compactions read
//! whole tables block by block, the block cache evicts, decoded records come and go on several
//! threads. glibc's malloc returns memory to the kernel only from the top of each heap: measured
//! (`matyan bench ingest --records 3000000 --layout chunked`, memory rows, glibc) it held 207 MiB
//! free against 111 MiB in use at the backlog phase's largest, all of it resident, and
//! `malloc_trim(0)` took 1–9 ms on that heap. jemalloc returns freed pages on its own after a decay
//! time; a purge returns them at once. The interval is `[storage] memory_trim_ms`.
//!
//! With an allocator that has no such call ([`crate::alloc::CAN_RELEASE`]) the trimmer does not
//! start.

use std::sync::OnceLock;
use std::time::Duration;

/// The first start of the trimmer: the interval it runs at, `None` if its thread could not start
/// (then none is tried again).
static STARTED: OnceLock<Option<Duration>> = OnceLock::new();

/// Starts the process's trimmer with `interval` unless one was started (the first interval holds;
/// a later, different one is logged and ignored). `Duration::ZERO` starts nothing. Answers whether
/// a trimmer runs at the end of the call.
pub fn trim_every(interval: Duration) -> bool {
    if interval.is_zero() || !crate::alloc::CAN_RELEASE {
        return running().is_some();
    }
    let running = *STARTED.get_or_init(|| spawn(interval).then_some(interval));
    if running.is_some_and(|r| r != interval) {
        tracing::debug!(?running, ?interval, "the allocator trimmer already runs; its interval stays");
    }
    running.is_some()
}

/// The interval of the running trimmer.
fn running() -> Option<Duration> {
    STARTED.get().copied().flatten()
}

fn spawn(interval: Duration) -> bool {
    let thread = std::thread::Builder::new().name("matyan-malloc-trim".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            crate::alloc::release_free();
        }
    });
    match thread {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the allocator trimmer; freed memory stays with the allocator");
            false
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        crate::bench::memory::status_kib("VmRSS:").unwrap()
    }

    #[test]
    fn a_trim_gives_back_memory_freed_below_memory_still_in_use() {
        if !crate::alloc::CAN_RELEASE {
            return;
        }
        // 64 MiB in 4 KiB blocks, then every block but the last freed: the last one keeps the
        // heap's top in place, so the allocator cannot give the freed pages back on its own.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![(i % 251) as u8 + 1; 4096]).collect();
        let last = blocks.pop().unwrap();
        let before = rss_kib();
        drop(blocks);
        let freed = rss_kib();
        crate::alloc::release_free();
        let trimmed = rss_kib();
        assert!(std::hint::black_box(&last)[0] > 0);
        // Other tests run on other threads of this process: compare with a wide margin.
        assert!(
            before.saturating_sub(trimmed) > 32 * 1024,
            "before {before} KiB, freed {freed} KiB, trimmed {trimmed} KiB"
        );
    }

    #[test]
    fn one_trimmer_runs_whatever_the_later_intervals() {
        // Other tests of this process open stores, which start it too: whichever came first holds.
        assert!(trim_every(Duration::from_secs(3600)));
        let first = running().unwrap();
        assert!(trim_every(Duration::from_secs(7)));
        assert!(trim_every(Duration::ZERO), "zero starts nothing, and one runs");
        assert_eq!(running(), Some(first));
    }
}
