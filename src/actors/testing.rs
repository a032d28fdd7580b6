//! Test support for the ingest actors (after Quickwit's test mailboxes and mini-redis's
//! `time::pause()`): an actix system on a current-thread runtime whose time is paused, a fake
//! [`Source`] whose partitions, commits, seeks and rebalances a test controls and inspects, a probe
//! actor that records what a run actor reports to its partition actor, and a [`Flusher`] over an
//! in-memory store.
//!
//! Time moves only when a test says so ([`advance`]) or while it waits for a condition
//! ([`until`], one virtual millisecond at a time), so flush deadlines, idle stops, commit
//! intervals and restart backoffs happen at the same virtual instant every run, without a real
//! sleep. This is the base a deterministic simulation of the pipeline builds on.
//!
//! Compiled only for the crate's own tests (`cfg(test)`): the harness reaches the actors' messages
//! and constructors, which are not a public API, and needs tokio's `test-util`, a dev-dependency.
//! A simulation inside the crate uses it as is; a `tests/` binary would need a cargo feature.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;

use super::flush::{DeadLetters, Flusher};
use super::models::{Flushed, RunActorConfig};
use super::run_actor::Idle;
use super::stats::Stats;
use crate::clock::Clock;
use crate::ingest::source::Backlog;
use crate::ingest::{Applier, AssignmentEvent, BatchBudget, Entry, Lease, Record, Source, SourceError, decode};
use crate::storage::kv::{Database, RetryOptions};
use crate::storage::layout::Layout;

/// The wall time every simulated clock of the harness starts at (2026-01-01T00:00:00Z).
pub const EPOCH_MICROS: i64 = 1_767_225_600_000_000;

/// Runs `test` to completion on a fresh actix system whose tokio time starts paused.
pub fn run_paused<F: Future>(test: F) -> F::Output {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds")
    });
    system.block_on(test)
}

/// Lets every task that can run do so, without moving time.
pub async fn settle() {
    for _ in 0..2_000 {
        tokio::task::yield_now().await;
    }
}

/// Moves paused time by `by`, firing the timers due meanwhile, then settles.
pub async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}

/// Waits until `condition` holds, checking it each virtual millisecond: the runtime runs what is
/// ready, then paused time jumps to the next millisecond (tokio holds it while a blocking commit
/// is in flight, so a commit never looks slow); panics naming `what` after ten virtual minutes.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..600_000 {
        if condition() {
            return;
        }
        // Virtual: under paused time this only lets the clock move to the next millisecond.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{what}: not reached in ten virtual minutes");
}

/// A record value of `run` of the given message `body` (`type` and `payload`).
pub fn value(run: &str, body: serde_json::Value) -> Vec<u8> {
    let mut message = serde_json::json!({"run_id": run, "timestamp": "2026-01-01T00:00:00Z"});
    if let (Some(m), Some(b)) = (message.as_object_mut(), body.as_object()) {
        m.extend(b.clone());
    }
    serde_json::to_vec(&message).expect("json encodes")
}

/// A `log_metric` record value of `run` at `step`.
pub fn metric(run: &str, step: i64) -> Vec<u8> {
    let payload = serde_json::json!({"name": "loss", "value": step, "step": step, "context": {}, "dtype": "int"});
    value(run, serde_json::json!({"type": "log_metric", "payload": payload}))
}

/// A `create_run` record value of `run`.
pub fn create_run(run: &str) -> Vec<u8> {
    value(run, serde_json::json!({"type": "create_run", "payload": {"force_resume": false}}))
}

/// The decoded entry of `bytes` at `partition`/`offset`.
pub fn entry(partition: i32, offset: i64, bytes: &[u8]) -> Entry {
    Entry { partition, offset, message: decode(bytes).expect("the test record decodes") }
}

/// A flusher over a fresh in-memory store, flushing on tasks of the test's runtime, with `slots`
/// transaction slots (0 holds every flight
/// before it opens its transaction until the test adds permits) and a simulated clock.
pub async fn flusher(slots: usize) -> Flusher {
    let db = Database::memory();
    let layout = Layout::open(&db).await.expect("the layout opens");
    let applier = Applier::new(layout);
    let dead_letters =
        Arc::new(DeadLetters::embedded(db.clone(), applier.clone(), RetryOptions::default(), "t".to_owned()));
    Flusher {
        db,
        applier,
        retry: RetryOptions::default(),
        stats: Stats::new(),
        dead_letters,
        // As in `matyan serve`: flushes run as tasks of the runtime, not inside the actor, so a
        // flight outlives an actor stopped under it.
        offload: Some(tokio::runtime::Handle::current()),
        transactions: Arc::new(tokio::sync::Semaphore::new(slots)),
        clock: Clock::simulated(EPOCH_MICROS),
    }
}

/// The checkpoint of `run` in `partition`: its last applied offset.
pub async fn checkpoint(flusher: &Flusher, run: &str, partition: i32) -> Option<i64> {
    let tx = flusher.db.create_trx().expect("a transaction opens");
    flusher.applier.checkpoint(&tx, run, partition).await.expect("the checkpoint reads")
}

/// Run actor settings of `budget` and `idle_timeout` on a simulated clock.
pub fn run_config(budget: BatchBudget, idle_timeout: Duration) -> RunActorConfig {
    RunActorConfig { budget, idle_timeout, clock: Clock::simulated(EPOCH_MICROS) }
}

/// What a [`Probe`] received.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// The offsets of every [`Flushed`] report, in arrival order.
    pub flushed: Vec<i64>,
    /// Every [`Idle`] report, as `(run, incarnation, pushes)`.
    pub idle: Vec<(String, u64, u64)>,
}

/// An actor standing in for a partition actor: it records the reports a run actor sends.
pub struct Probe {
    log: Arc<Mutex<ProbeLog>>,
}

impl Probe {
    /// Starts a probe; returns its address and its log.
    pub fn start() -> (Addr<Probe>, Arc<Mutex<ProbeLog>>) {
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        (Probe { log: Arc::clone(&log) }.start(), log)
    }
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<Flushed> for Probe {
    type Result = ();

    fn handle(&mut self, msg: Flushed, _ctx: &mut Self::Context) {
        self.log.lock().flushed.extend(msg.offsets);
    }
}

impl Handler<Idle> for Probe {
    type Result = ();

    fn handle(&mut self, msg: Idle, _ctx: &mut Self::Context) {
        self.log.lock().idle.push((msg.run, msg.incarnation, msg.pushes));
    }
}

#[derive(Debug, Default)]
struct FakeState {
    /// Every partition's records; a record's offset is its index.
    partitions: BTreeMap<i32, Vec<Vec<u8>>>,
    assigned: BTreeSet<i32>,
    epochs: BTreeMap<i32, u64>,
    positions: BTreeMap<i32, i64>,
    paused: BTreeSet<i32>,
    committed: BTreeMap<i32, i64>,
    seeks: Vec<(i32, i64)>,
    events: VecDeque<AssignmentEvent>,
    stale_commits: u64,
}

/// A [`Source`] held in memory and driven by the test: it appends records, revokes and assigns
/// partitions (reported as rebalances by the next poll, with a new lease epoch), and reads back
/// commits and seeks. An empty poll waits its timeout on (paused) tokio time.
#[derive(Debug, Default)]
pub struct FakeSource {
    state: Mutex<FakeState>,
}

impl FakeSource {
    /// A source with `partitions` partitions (0, 1, …), all assigned under epoch 1.
    pub fn new(partitions: i32) -> Arc<Self> {
        let source = Self::default();
        {
            let mut s = source.state.lock();
            for p in 0..partitions {
                s.partitions.insert(p, Vec::new());
                s.assigned.insert(p);
                s.epochs.insert(p, 1);
            }
        }
        Arc::new(source)
    }

    /// Appends `value` to `partition`; returns its offset.
    pub fn append(&self, partition: i32, value: Vec<u8>) -> i64 {
        let mut s = self.state.lock();
        let records = s.partitions.entry(partition).or_default();
        records.push(value);
        records.len() as i64 - 1
    }

    /// Takes `partition` away (the next poll reports it revoked).
    pub fn revoke(&self, partition: i32) {
        let mut s = self.state.lock();
        if s.assigned.remove(&partition) {
            s.events.push_back(AssignmentEvent::Revoked(vec![partition]));
        }
    }

    /// The committed offset of `partition`.
    pub fn committed(&self, partition: i32) -> Option<i64> {
        self.state.lock().committed.get(&partition).copied()
    }

    /// Every seek so far, as `(partition, offset)`.
    pub fn seeks(&self) -> Vec<(i32, i64)> {
        self.state.lock().seeks.clone()
    }

    /// Commits refused because their lease was stale.
    pub fn stale_commits(&self) -> u64 {
        self.state.lock().stale_commits
    }

    /// The offset the next poll of `partition` reads.
    pub fn position(&self, partition: i32) -> i64 {
        let s = self.state.lock();
        s.positions.get(&partition).copied().or_else(|| s.committed.get(&partition).copied()).unwrap_or(0)
    }
}

impl Source for FakeSource {
    async fn poll(&self, max_records: usize, timeout: Duration) -> Result<Vec<Record>, SourceError> {
        let records = {
            let mut s = self.state.lock();
            let mut out = Vec::new();
            let readable: Vec<i32> = s.assigned.iter().copied().filter(|p| !s.paused.contains(p)).collect();
            for p in readable {
                let start = s.positions.get(&p).copied().or_else(|| s.committed.get(&p).copied()).unwrap_or(0);
                let values = s.partitions.get(&p).map(Vec::as_slice).unwrap_or_default();
                let end = values.len().min(start as usize + max_records.saturating_sub(out.len()));
                let slice = values.get(start as usize..end).unwrap_or_default();
                for (offset, value) in (start..).zip(slice) {
                    out.push(Record { partition: p, offset, key: None, value: value.clone(), timestamp_ms: 0 });
                }
                s.positions.insert(p, end.max(start as usize) as i64);
            }
            out
        };
        if records.is_empty() {
            tokio::time::sleep(timeout).await;
        }
        Ok(records)
    }

    async fn commit(&self, partition: i32, next_offset: i64) -> Result<(), SourceError> {
        self.state.lock().committed.insert(partition, next_offset);
        Ok(())
    }

    async fn commit_leased(&self, lease: Lease, next_offset: i64) -> Result<(), SourceError> {
        let mut s = self.state.lock();
        if !s.assigned.contains(&lease.partition) || s.epochs.get(&lease.partition) != Some(&lease.epoch) {
            s.stale_commits += 1;
            return Err(SourceError::Kafka(crate::ingest::KafkaSourceError::StaleEpoch {
                partition: lease.partition,
                epoch: lease.epoch,
                current: None,
            }));
        }
        s.committed.insert(lease.partition, next_offset);
        Ok(())
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        let mut s = self.state.lock();
        s.seeks.push((partition, offset));
        s.positions.insert(partition, offset);
        Ok(())
    }

    fn assignment(&self) -> Vec<i32> {
        self.state.lock().assigned.iter().copied().collect()
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        self.state.lock().paused.insert(partition);
        Ok(())
    }

    fn resume(&self, partition: i32) -> Result<(), SourceError> {
        self.state.lock().paused.remove(&partition);
        Ok(())
    }

    fn take_assignment_events(&self) -> Vec<AssignmentEvent> {
        self.state.lock().events.drain(..).collect()
    }

    fn lease(&self, partition: i32) -> Option<Lease> {
        let s = self.state.lock();
        s.assigned
            .contains(&partition)
            .then(|| Lease { partition, epoch: s.epochs.get(&partition).copied().unwrap_or(0) })
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, SourceError> {
        let s = self.state.lock();
        Ok(s.assigned
            .iter()
            .map(|p| Backlog {
                partition: *p,
                end: s.partitions.get(p).map_or(0, |r| r.len() as i64),
                committed: s.committed.get(p).copied().unwrap_or(0),
            })
            .collect())
    }
}
