//! The process's memory allocator: jemalloc with the cargo feature `jemalloc` (on by default), the
//! system's malloc without it; what it holds ([`account`]) and giving its free pages back
//! ([`release_free`], which the store's trimmer calls every `storage.memory_trim_ms`).
//!
//! Why jemalloc (docs/adr/0015-jemalloc.md): records are decoded on one thread and freed on
//! another, and glibc's malloc returns a chunk freed on another thread to the arena that made it,
//! under that arena's lock. Draining a backlog, the two runtime threads blocked on those locks
//! about 6,000 times a second (`perf record -e sched:sched_switch` of `matyan bench ingest`'s
//! backlog phase: 54 % of all context switches in `__lll_lock_wait_private`, under `free` of
//! decoded records and `malloc` of their strings), and the process used 1.4 of 2 cores. jemalloc
//! gives every thread a cache and frees remotely without taking the arena's lock on each chunk.
//!
//! The `matyan` binary installs [`Global`] (`src/main.rs`), as do the library's unit tests. A test
//! binary that installs an allocator of its own (`tests/support/capped_alloc.rs`, which counts and
//! caps) does not run on jemalloc: there [`account`] reads jemalloc's empty heap and
//! [`release_free`] purges nothing.

/// The allocator to install as `#[global_allocator]`: jemalloc with the feature.
#[cfg(feature = "jemalloc")]
pub type Global = tikv_jemallocator::Jemalloc;

/// The allocator to install as `#[global_allocator]`: the system's without the feature.
#[cfg(not(feature = "jemalloc"))]
pub type Global = std::alloc::System;

/// The value of [`Global`] to install.
#[cfg(feature = "jemalloc")]
pub const GLOBAL: Global = tikv_jemallocator::Jemalloc;

/// The value of [`Global`] to install.
#[cfg(not(feature = "jemalloc"))]
pub const GLOBAL: Global = std::alloc::System;

#[cfg(test)]
#[global_allocator]
static TEST_GLOBAL: Global = GLOBAL;

/// jemalloc's options, read once at its first allocation (the environment variable
/// `_RJEM_MALLOC_CONF` overrides them): one arena per CPU instead of four, and thread caches of
/// objects up to 4 KiB instead of 32 KiB. Measured (`matyan bench ingest --records 3000000 --layout
/// chunked`, option sets through the variable, alternated; ADR 0015 has every set): live phase peak
/// 99–107 MiB with jemalloc's defaults, 88–90 MiB with these (the shipped build), drain rates within
/// their spread; `matyan bench gateway` 102–105 MiB with the defaults, 93–97 MiB with these.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 36] = b"percpu_arena:percpu,tcache_max:4096\0";

/// The allocator this build uses, for logs and benchmark headers.
pub const NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(all(target_os = "linux", target_env = "gnu")) {
    "glibc"
} else {
    "system"
};

/// The allocator and, for jemalloc, the options it runs with (as it reports them: the environment
/// may override ours), for benchmark headers.
pub fn describe() -> String {
    #[cfg(feature = "jemalloc")]
    {
        // SAFETY: `opt.tcache_max` is a size_t; `opt.percpu_arena` a C string jemalloc keeps.
        let tcache_max: Option<usize> = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.tcache_max\0") }.ok();
        let percpu = unsafe { tikv_jemalloc_ctl::raw::read_str(b"opt.percpu_arena\0") }.ok();
        let percpu = percpu.map(|p| String::from_utf8_lossy(p.strip_suffix(b"\0").unwrap_or(p)).into_owned());
        let narenas = tikv_jemalloc_ctl::arenas::narenas::read().ok();
        format!(
            "{NAME} (percpu_arena {}, arenas {}, tcache_max {})",
            percpu.unwrap_or_else(|| "?".into()),
            narenas.map_or_else(|| "?".into(), |n| n.to_string()),
            tcache_max.map_or_else(|| "?".into(), |n| n.to_string()),
        )
    }
    #[cfg(not(feature = "jemalloc"))]
    NAME.to_owned()
}

/// Whether [`release_free`] does anything with this build's allocator.
pub const CAN_RELEASE: bool = cfg!(any(feature = "jemalloc", all(target_os = "linux", target_env = "gnu")));

/// The allocator's own account of its heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapAccount {
    /// Bytes handed out and not had back: the live heap.
    pub in_use_bytes: u64,
    /// Bytes the allocator holds resident beyond those: freed memory it keeps (jemalloc: its
    /// resident pages less the live heap, its own metadata included; glibc: its free chunks).
    pub free_bytes: u64,
}

fn bytes(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The allocator's account now (`None` where it keeps none).
#[cfg(feature = "jemalloc")]
pub fn account() -> Option<HeapAccount> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // jemalloc's statistics are a snapshot taken at each epoch.
    epoch::advance().ok()?;
    let in_use = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some(HeapAccount { in_use_bytes: bytes(in_use), free_bytes: bytes(resident.saturating_sub(in_use)) })
}

/// The allocator's account now: glibc's, all arenas together. `mallinfo2` walks every free chunk
/// under its arena's lock, so callers sample it sparingly.
#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
pub fn account() -> Option<HeapAccount> {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's own statistics.
    let info = unsafe { libc::mallinfo2() };
    Some(HeapAccount { in_use_bytes: bytes(info.uordblks) + bytes(info.hblkhd), free_bytes: bytes(info.fordblks) })
}

/// The allocator's account now (`None` where it keeps none).
#[cfg(all(not(feature = "jemalloc"), not(all(target_os = "linux", target_env = "gnu"))))]
pub fn account() -> Option<HeapAccount> {
    None
}

/// Gives the pages the allocator holds free back to the operating system now. jemalloc returns
/// freed pages on its own after a decay time (10 s by default); compactions and the block cache
/// free in bursts, and this returns them at once.
#[cfg(feature = "jemalloc")]
pub fn release_free() {
    // `MALLCTL_ARENAS_ALL`: every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and `arena.<i>.purge` reads and writes no value, so
    // every pointer is null and the length zero, as jemalloc requires of it.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(errno = rc, "jemalloc purge failed");
    }
}

/// Gives the pages the allocator holds free back to the operating system now: glibc keeps freed
/// memory in its arenas and returns it only from the top of each heap on its own.
#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
pub fn release_free() {
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it trims it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives the pages the allocator holds free back (nothing to do with this allocator).
#[cfg(all(not(feature = "jemalloc"), not(all(target_os = "linux", target_env = "gnu"))))]
pub fn release_free() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_reads_our_options() {
        // SAFETY: `opt.tcache_max` is a size_t, read as one.
        let tcache_max: usize = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.tcache_max\0") }.unwrap();
        // SAFETY: `opt.percpu_arena` is a C string jemalloc keeps for the process's life.
        let percpu = unsafe { tikv_jemalloc_ctl::raw::read_str(b"opt.percpu_arena\0") }.unwrap();
        assert_eq!((tcache_max, percpu), (4096, &b"percpu\0"[..]));
    }

    #[test]
    fn the_account_follows_what_is_allocated() {
        let Some(before) = account() else { return };
        let block = vec![7u8; 64 << 20];
        let during = account().unwrap();
        assert!(std::hint::black_box(&block)[0] == 7);
        // Other tests allocate on other threads meanwhile: compare with a wide margin.
        assert!(
            during.in_use_bytes >= before.in_use_bytes + (32 << 20),
            "64 MiB allocated, account before {before:?}, during {during:?}"
        );
    }
}
