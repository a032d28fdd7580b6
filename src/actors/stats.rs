//! What the supervisor and the actors share, read by [`PipelineHandle::counters`] without a message
//! (so a counters request never queues behind data), in three parts that must not be confused:
//! - [`Recovery`]: each partition's committed offset and first offset received, the state a
//!   restart seeks to (its floor); losing it would replay or skip records;
//! - [`Counters`]: what happened, for operators and tests; nothing decides on them;
//! - [`RunRegistry`]: the live run actors, for chaos kills and the active gauge.
//!
//! Each event that counts has one `note_*` on [`Stats`], which updates the parts, records the
//! metric of the catalogue and logs, so an event is never counted in two places.
//!
//! [`PipelineHandle::counters`]: super::PipelineHandle::counters

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

use super::models::{ActorKind, FailureCause};
use crate::ingest::{ApplyOutcome, FlushReason};

/// Progress of one partition as the pipeline knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PartitionCounters {
    /// The last offset committed to the source (the next offset to read after a restart).
    pub committed: Option<i64>,
    /// The offset of the first record of this partition this process received.
    pub first_seen: Option<i64>,
    /// One past the highest offset received.
    pub received_end: Option<i64>,
}

impl PartitionCounters {
    /// Returns the records received and not yet committed.
    pub fn lag(&self) -> i64 {
        match (self.received_end, self.committed.or(self.first_seen)) {
            (Some(end), Some(low)) => (end - low).max(0),
            _ => 0,
        }
    }

    /// Returns the offset a restarted partition replays from: the committed offset, or the first
    /// offset received when nothing was committed yet (`None`: nothing was received, nothing to
    /// replay).
    pub fn floor(&self) -> Option<i64> {
        self.committed.or(self.first_seen)
    }
}

/// A snapshot of the pipeline's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineCounters {
    /// Whether the supervisor runs (false before start and after shutdown).
    pub running: bool,
    /// Records returned by the source.
    pub consumed: u64,
    /// Messages applied (or skipped for a tombstone) in committed transactions.
    pub applied: u64,
    /// Entries skipped as replays (at or below their run's checkpoint).
    pub replayed: u64,
    /// Records dead-lettered (decode and apply failures).
    pub dead_letters: u64,
    /// Flushes by reason.
    pub flushes: BTreeMap<String, u64>,
    /// Restarts by `actor/cause`.
    pub restarts: BTreeMap<String, u64>,
    /// Live run actors.
    pub active_run_actors: usize,
    /// Seconds the source loop waited on full mailboxes.
    pub backpressure_seconds: f64,
    /// Partitions handed to this pipeline by rebalances (the first assignment included).
    pub assigned_partitions: u64,
    /// Partitions taken from this pipeline by rebalances.
    pub revoked_partitions: u64,
    /// Records of revoked partitions received and not committed when they were revoked: dropped
    /// here, read again by the new owner (which skips what was applied here).
    pub revoked_uncommitted: u64,
    /// Commits refused because their partition was revoked since (ignored).
    pub stale_commits: u64,
    /// Per-partition progress.
    pub partitions: BTreeMap<i32, PartitionCounters>,
    /// Run actors stopped to make room in a partition at its cap, each after its flush landed.
    pub evicted_run_actors: u64,
    /// The most run actors live at once since the pipeline started.
    pub peak_run_actors: usize,
}

impl PipelineCounters {
    /// Returns the total restarts, all actors and causes.
    pub fn restarts_total(&self) -> u64 {
        self.restarts.values().sum()
    }
}

/// A live run actor, for chaos kills and the active gauge.
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// The partition whose actor owns the run actor.
    pub partition: i32,
    /// The epoch of that partition group.
    pub epoch: u64,
}

/// The state that decides recovery: per partition, the committed offset and the first offset
/// received, from which a restarted group replays ([`PartitionCounters::floor`]).
#[derive(Debug, Default)]
pub struct Recovery {
    partitions: Mutex<BTreeMap<i32, PartitionCounters>>,
}

impl Recovery {
    /// Notes the first and highest offset received of a partition.
    fn note_received(&self, partition: i32, first: i64, last: i64) {
        let mut parts = self.partitions.lock();
        let p = parts.entry(partition).or_default();
        p.first_seen.get_or_insert(first);
        p.received_end = Some(p.received_end.map_or(last + 1, |e| e.max(last + 1)));
    }

    /// Notes a commit to the source (never moving the committed offset back: an older group's late
    /// commit may land after a newer one's); returns the records received and not committed.
    fn note_committed(&self, partition: i32, offset: i64) -> i64 {
        let mut parts = self.partitions.lock();
        let p = parts.entry(partition).or_default();
        p.committed = Some(p.committed.map_or(offset, |c| c.max(offset)));
        p.lag()
    }

    /// Forgets a partition; returns the records it received and had not committed.
    fn forget(&self, partition: i32) -> u64 {
        self.partitions.lock().remove(&partition).map_or(0, |p| p.lag().max(0) as u64)
    }

    /// Returns one partition's progress.
    pub fn partition(&self, partition: i32) -> PartitionCounters {
        self.partitions.lock().get(&partition).copied().unwrap_or_default()
    }

    fn snapshot(&self) -> BTreeMap<i32, PartitionCounters> {
        self.partitions.lock().clone()
    }
}

/// What happened, counted for operators and tests (see [`PipelineCounters`] for each meaning).
#[derive(Debug, Default)]
pub struct Counters {
    consumed: AtomicU64,
    applied: AtomicU64,
    replayed: AtomicU64,
    dead_letters: AtomicU64,
    flushes: [AtomicU64; FlushReason::ALL.len()],
    backpressure_micros: AtomicU64,
    assigned_partitions: AtomicU64,
    revoked_partitions: AtomicU64,
    revoked_uncommitted: AtomicU64,
    stale_commits: AtomicU64,
    restarts: Mutex<BTreeMap<(ActorKind, FailureCause), u64>>,
    evicted_run_actors: AtomicU64,
}

/// The live run actors of a pipeline.
#[derive(Debug, Default)]
pub struct RunRegistry {
    runs: Mutex<HashMap<(i32, String), RunEntry>>,
    peak: AtomicUsize,
}

impl RunRegistry {
    /// Registers a live run actor.
    pub fn register(&self, partition: i32, run: &str, epoch: u64) {
        let mut runs = self.runs.lock();
        runs.insert((partition, run.to_owned()), RunEntry { partition, epoch });
        self.peak.fetch_max(runs.len(), Ordering::Relaxed);
        crate::metrics::ingest_active_run_actors(runs.len());
    }

    /// Forgets a run actor, if the registered one is of `epoch` (a newer group may own it now).
    pub fn unregister(&self, partition: i32, run: &str, epoch: u64) {
        let mut runs = self.runs.lock();
        let key = (partition, run.to_owned());
        if runs.get(&key).is_some_and(|e| e.epoch == epoch) {
            runs.remove(&key);
        }
        crate::metrics::ingest_active_run_actors(runs.len());
    }

    /// Finds the live run actor of `run`.
    pub fn find(&self, run: &str) -> Option<RunEntry> {
        self.runs.lock().iter().find(|((_, r), _)| r == run).map(|(_, e)| e.clone())
    }

    /// Picks a live run id, `seed` selecting among them.
    pub fn pick(&self, seed: usize) -> Option<String> {
        let runs = self.runs.lock();
        if runs.is_empty() {
            return None;
        }
        runs.keys().nth(seed % runs.len()).map(|(_, r)| r.clone())
    }

    /// Returns the live run actors now.
    pub fn len(&self) -> usize {
        self.runs.lock().len()
    }

    /// Tells whether no run actor is live.
    pub fn is_empty(&self) -> bool {
        self.runs.lock().is_empty()
    }
}

/// One committed flush transaction, as [`Stats::note_flush`] records it.
#[derive(Debug, Clone, Copy)]
pub struct FlushNote {
    /// Why the batch was flushed.
    pub reason: FlushReason,
    /// The batch's estimated bytes (the reference's `txn_estimated_bytes`).
    pub estimated_bytes: usize,
    /// The transaction's approximate size at commit.
    pub txn_bytes: usize,
    /// From the slot wait to the commit.
    pub seconds: f64,
    /// Retries the transaction took.
    pub retries: u64,
}

/// The state shared by the supervisor and the actors of one pipeline (see the module docs).
#[derive(Debug, Default)]
pub struct Stats {
    running: AtomicBool,
    /// What a restart replays from.
    pub recovery: Recovery,
    /// What happened, for operators and tests (nothing decides on it).
    pub counters: Counters,
    /// The live run actors.
    pub runs: RunRegistry,
}

impl Stats {
    /// Creates zeroed state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the supervisor running or stopped.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Tells whether the supervisor runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Counts polled records and notes the first and highest offset per partition.
    pub fn note_polled(&self, partition: i32, first: i64, last: i64, count: usize) {
        self.counters.consumed.fetch_add(count as u64, Ordering::Relaxed);
        self.recovery.note_received(partition, first, last);
    }

    /// Records a successful commit to the source; returns the records received and not committed
    /// (the consumer-lag gauge is the source's backlog, set by [`super::lag`]).
    pub fn note_committed(&self, partition: i32, offset: i64) -> i64 {
        self.recovery.note_committed(partition, offset)
    }

    /// Counts partitions assigned by a rebalance.
    pub fn note_assigned(&self, partitions: usize) {
        self.counters.assigned_partitions.fetch_add(partitions as u64, Ordering::Relaxed);
        crate::metrics::ingest_rebalance("assigned", partitions);
    }

    /// Counts a revoked partition and forgets its progress: its floor belongs to the group now,
    /// and a later assignment starts from the group's committed offset. Returns the records it
    /// received and had not committed (what the new owner reads again).
    pub fn note_revoked(&self, partition: i32) -> u64 {
        let dropped = self.recovery.forget(partition);
        self.counters.revoked_partitions.fetch_add(1, Ordering::Relaxed);
        self.counters.revoked_uncommitted.fetch_add(dropped, Ordering::Relaxed);
        crate::metrics::ingest_rebalance("revoked", 1);
        crate::metrics::ingest_revoked_uncommitted(dropped);
        crate::metrics::ingest_consumer_lag(partition, 0);
        dropped
    }

    /// Counts a commit refused for a stale lease.
    pub fn note_stale_commit(&self) {
        self.counters.stale_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what one run's part of a committed transaction did: messages applied by kind,
    /// tombstoned (counted as applied) and replayed. Its dead letters are counted by the caller,
    /// which knows their offsets.
    pub fn note_applied(&self, outcome: &ApplyOutcome) {
        for (kind, n) in &outcome.applied {
            crate::metrics::ingest_processed(kind.as_str(), *n);
        }
        let applied = outcome.applied_total() + outcome.tombstoned as u64;
        self.counters.applied.fetch_add(applied, Ordering::Relaxed);
        self.counters.replayed.fetch_add(outcome.replayed as u64, Ordering::Relaxed);
    }

    /// Counts one record dead-lettered at apply (or as a lone entry too large for a transaction).
    pub fn note_dead_letter(&self, reason: &'static str) {
        self.counters.dead_letters.fetch_add(1, Ordering::Relaxed);
        crate::metrics::ingest_dead_letter(reason);
    }

    /// Counts one record that did not decode, once the sink acknowledged its dead letter.
    pub fn note_undecodable(&self, reason: &'static str) {
        self.note_dead_letter(reason);
        crate::metrics::ingest_error("validation");
    }

    /// Counts one committed flush transaction and records its sizes, duration and retries.
    pub fn note_flush(&self, flush: FlushNote) {
        let i = FlushReason::ALL.iter().position(|r| *r == flush.reason).unwrap_or(0);
        self.counters.flushes[i].fetch_add(1, Ordering::Relaxed);
        crate::metrics::ingest_flush(flush.reason.as_str(), flush.estimated_bytes, flush.txn_bytes, flush.seconds);
        if flush.retries > 0 {
            crate::metrics::ingest_retries(flush.retries);
        }
        tracing::trace!(
            reason = flush.reason.as_str(),
            txn_bytes = flush.txn_bytes,
            retries = flush.retries,
            "flush committed"
        );
    }

    /// Adds back-pressure wait time.
    pub fn note_backpressure(&self, seconds: f64) {
        self.counters.backpressure_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        crate::metrics::ingest_backpressure(seconds);
    }

    /// Counts one restart.
    pub fn note_restart(&self, actor: ActorKind, cause: FailureCause) {
        *self.counters.restarts.lock().entry((actor, cause)).or_insert(0) += 1;
        crate::metrics::ingest_actor_restart(actor.as_str(), cause.as_str());
    }

    /// Counts run actors evicted from a full partition (after their flush landed).
    pub fn note_evicted(&self, count: usize) {
        self.counters.evicted_run_actors.fetch_add(count as u64, Ordering::Relaxed);
        crate::metrics::ingest_run_actor_evictions(count);
    }

    /// Returns a snapshot of the three parts, read without a message.
    pub fn snapshot(&self) -> PipelineCounters {
        let c = &self.counters;
        let flushes = FlushReason::ALL
            .iter()
            .zip(c.flushes.iter())
            .map(|(r, n)| (r.as_str().to_owned(), n.load(Ordering::Relaxed)))
            .collect();
        let restarts = c.restarts.lock().iter().map(|((actor, cause), n)| (format!("{actor}/{cause}"), *n)).collect();
        PipelineCounters {
            running: self.is_running(),
            consumed: c.consumed.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            flushes,
            restarts,
            active_run_actors: self.runs.len(),
            backpressure_seconds: c.backpressure_micros.load(Ordering::Relaxed) as f64 / 1e6,
            assigned_partitions: c.assigned_partitions.load(Ordering::Relaxed),
            revoked_partitions: c.revoked_partitions.load(Ordering::Relaxed),
            revoked_uncommitted: c.revoked_uncommitted.load(Ordering::Relaxed),
            stale_commits: c.stale_commits.load(Ordering::Relaxed),
            partitions: self.recovery.snapshot(),
            evicted_run_actors: c.evicted_run_actors.load(Ordering::Relaxed),
            peak_run_actors: self.runs.peak.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_prefers_the_committed_offset_and_lag_counts_from_it() {
        let s = Stats::default();
        assert_eq!(s.recovery.partition(0).floor(), None);
        s.note_polled(0, 5, 9, 5);
        assert_eq!((s.recovery.partition(0).floor(), s.recovery.partition(0).lag()), (Some(5), 5));
        assert_eq!(s.note_committed(0, 8), 2);
        s.note_committed(0, 7); // an older group's late commit never moves it back
        assert_eq!(s.recovery.partition(0).floor(), Some(8));
    }

    #[test]
    fn a_revoked_partition_counts_what_it_had_not_committed_and_starts_over() {
        let s = Stats::default();
        s.note_polled(3, 10, 29, 20);
        s.note_committed(3, 25);
        assert_eq!(s.note_revoked(3), 5);
        assert_eq!(s.recovery.partition(3), PartitionCounters::default(), "a later assignment starts from the group");
        let c = s.snapshot();
        assert_eq!((c.revoked_partitions, c.revoked_uncommitted), (1, 5));
    }

    #[test]
    fn run_registry_ignores_stale_epochs() {
        let s = Stats::default();
        s.runs.register(1, "r", 1);
        s.runs.register(1, "r", 2);
        s.runs.unregister(1, "r", 1);
        assert_eq!(s.runs.find("r").map(|e| e.epoch), Some(2));
        s.runs.unregister(1, "r", 2);
        assert!(s.runs.find("r").is_none());
    }
}
