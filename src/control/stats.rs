//! Counters of the control workers, shared by their actors and read by [`ControlHandle`]
//! (super::ControlHandle) without a message, and the offsets a restart replays from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ControlCounters {
    /// Records read from the control topic (replays included).
    pub consumed: u64,
    /// Events handled (run deletions once their objects are gone; the others at once).
    pub processed: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Run deletions waiting for the janitor or in its hands.
    pub janitor_backlog: u64,
    /// Objects the janitor removed (listed or named, already gone included).
    pub objects_removed: u64,
    /// Blob store calls the janitor retried.
    pub janitor_retries: u64,
    /// Restarts of consumer groups (failures and chaos kills).
    pub restarts: u64,
    /// The last committed offset of each partition (the next one to read).
    pub committed: BTreeMap<i32, i64>,
}

/// Where a partition replays from after a restart.
#[derive(Debug, Clone, Copy, Default)]
struct Floor {
    committed: Option<i64>,
    first_polled: Option<i64>,
}

/// The shared counters (atomics, so reading them never waits for the actors).
#[derive(Debug, Default)]
pub struct ControlStats {
    running: AtomicBool,
    consumed: AtomicU64,
    processed: AtomicU64,
    dead_lettered: AtomicU64,
    backlog: AtomicU64,
    objects_removed: AtomicU64,
    janitor_retries: AtomicU64,
    restarts: AtomicU64,
    floors: Mutex<BTreeMap<i32, Floor>>,
}

impl ControlStats {
    /// Counts records read from partition `partition`, the first at `first_offset`.
    pub fn note_polled(&self, partition: i32, first_offset: i64, records: usize) {
        self.consumed.fetch_add(records as u64, Ordering::Relaxed);
        crate::metrics::control_consumed(records);
        let mut floors = self.floors.lock();
        let floor = floors.entry(partition).or_default();
        floor.first_polled.get_or_insert(first_offset);
    }

    /// Counts one handled event of type `label`.
    pub fn note_processed(&self, label: &'static str) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::control_processed(label);
    }

    /// Counts one dead letter.
    pub fn note_dead_letter(&self, reason: &'static str) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        crate::metrics::control_dead_letter(reason);
    }

    /// Moves the janitor's backlog by one run deletion, up or down.
    pub fn note_backlog(&self, up: bool) {
        let now = if up {
            self.backlog.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            let prev = self.backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(1)));
            prev.unwrap_or(0).saturating_sub(1)
        };
        crate::metrics::control_janitor_backlog(now);
    }

    /// The janitor's backlog now.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Counts objects removed by the janitor.
    pub fn note_removed(&self, objects: usize) {
        self.objects_removed.fetch_add(objects as u64, Ordering::Relaxed);
        crate::metrics::control_objects_removed(objects);
    }

    /// Counts one retried blob store call.
    pub fn note_retry(&self) {
        self.janitor_retries.fetch_add(1, Ordering::Relaxed);
        crate::metrics::control_janitor_retry();
    }

    /// Counts a restart of `actor` for `cause`.
    pub fn note_restart(&self, actor: &'static str, cause: &'static str) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        crate::metrics::control_actor_restart(actor, cause);
    }

    /// Records the committed offset of `partition`.
    pub fn note_committed(&self, partition: i32, next_offset: i64) {
        self.floors.lock().entry(partition).or_default().committed = Some(next_offset);
    }

    /// Where `partition` replays from: its committed offset, or the first offset read when
    /// nothing was committed; `None` when nothing was read.
    pub fn floor(&self, partition: i32) -> Option<i64> {
        self.floors.lock().get(&partition).and_then(|f| f.committed.or(f.first_polled))
    }

    /// Forgets a partition that was revoked (its new owner replays from the group's offset).
    pub fn forget(&self, partition: i32) {
        self.floors.lock().remove(&partition);
    }

    /// Whether the supervisor runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Marks the supervisor as running or stopped.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> ControlCounters {
        ControlCounters {
            consumed: self.consumed.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            janitor_backlog: self.backlog.load(Ordering::Relaxed),
            objects_removed: self.objects_removed.load(Ordering::Relaxed),
            janitor_retries: self.janitor_retries.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            committed: self.floors.lock().iter().filter_map(|(p, f)| f.committed.map(|c| (*p, c))).collect(),
        }
    }
}
