//! The partition actor: one per assigned partition and lease. It receives the partition's records
//! decoded (the source loop decodes them off the actor thread), dead-letters those that do not decode (to the pipeline's sink, counted by reason, from a task of
//! their own so a slow sink holds back only the commit past them; their offsets count as done only
//! once the sink acknowledged them, and a delivery waits when [`DEAD_LETTER_SLOTS`] deliveries'
//! letters are in flight), routes the others by run id to run actors
//! it creates on demand, tracks which offsets are not flushed yet, and commits the partition's low
//! watermark of unflushed records to the source under its lease.
//!
//! Rebalances: the supervisor stops the actor of a revoked partition like a kill (its buffered
//! records are dropped; the new owner reads them again from the committed offset). Periodic
//! commits run as tasks of their own, so one in flight at that moment still ends: the source
//! refuses it as stale, which is expected, so it is logged and counted, never treated as a failure.
//!
//! A delivery is handled atomically (`AtomicResponse`): the next delivery waits until every run
//! actor accepted its records, so the source loop feels a full run mailbox (back-pressure) and the
//! records of a run reach its actor in source order.
//!
//! Live run actors are capped (`max_run_actors_per_partition`), so 100,000 runs do not mean
//! 100,000 actors with their batches and timers. A delivery whose new runs do not fit first evicts
//! the least recently used runs that are not in it: each hands over what it buffered
//! ([`Surrender`], at most [`FLUSH_CONCURRENCY`] at a time, after its flight landed), the small
//! ones are flushed together in shared transactions under the batch budgets (each run's
//! checkpoint written in the transaction with its data, reason `evict`), their offsets count as
//! flushed only once that committed, and only then are the actors stopped and forgotten. No push
//! is in flight to them (the previous delivery was accepted before this one started), so nothing
//! sent to them is lost.
//! The delivery waits meanwhile, which is the back-pressure that keeps memory bounded. With more
//! new runs in one delivery than the cap, those that fit go first and the rest follow once these
//! accepted their records and can be evicted in turn.
//!
//! Chaos and failures: the group's `killed` flag (shared with its run actors) makes every handler
//! stop the actor without flushing; a failure is reported to the supervisor, which restarts the
//! whole group from the committed offset.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::flush::{FlushFailure, Flusher};
use super::models::{ActorExit, ActorKind, Failure, FailureCause, Flushed, Polled, RunActorConfig, Undecoded};
use super::run_actor::{FlushNow, Idle, Push, RunActor, Stop, Surrender, Surrendered};
use super::stats::Stats;
use crate::clock::Clock;
use crate::fast_hash::FastMap;
use crate::ingest::dlq::{DeadLetterError, Rejected};
use crate::ingest::{Batch, BatchBudget, Entry, FlushReason, Lease, Source, SourceError};

/// Mailbox capacity of a partition actor, in deliveries (each is one poll's records of the partition).
pub const PARTITION_MAILBOX: usize = 4;

/// Deliveries whose dead letters may be in flight at once; the next one waits for a slot.
pub const DEAD_LETTER_SLOTS: u32 = 4;

/// Run actors a drain (shutdown, revoke) or an eviction flushes at once in one partition. Each
/// flush is a transaction: thousands started together queue for the same cores past the 5 s
/// read-version limit (`transaction_too_old`) and fail, where a bounded stream of them commits.
pub const FLUSH_CONCURRENCY: usize = 32;

/// Run ids ordered by their last delivery, least recent first: whom an eviction picks.
#[derive(Debug, Default)]
pub struct RunLru {
    by_tick: BTreeMap<u64, String>,
    ticks: FastMap<String, u64>,
    next: u64,
}

impl RunLru {
    /// Marks `run` used now.
    pub fn touch(&mut self, run: &str) {
        if let Some(old) = self.ticks.insert(run.to_owned(), self.next) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.next, run.to_owned());
        self.next += 1;
    }

    /// Forgets `run`.
    pub fn remove(&mut self, run: &str) {
        if let Some(old) = self.ticks.remove(run) {
            self.by_tick.remove(&old);
        }
    }

    /// Returns the tick the next [`touch`](Self::touch) gets: runs touched from now on are not
    /// picked by [`oldest`](Self::oldest) with this as `before`.
    pub fn now(&self) -> u64 {
        self.next
    }

    /// Returns up to `k` runs, least recently used first, among those last used before `before`.
    pub fn oldest(&self, k: usize, before: u64) -> Vec<String> {
        self.by_tick.range(..before).take(k).map(|(_, run)| run.clone()).collect()
    }

    /// Returns how many runs it holds.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// Tells whether it holds no run.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }
}

/// The offsets a partition actor received and has not seen flushed, in offset order.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// `(offset, flushed)`, ascending; flushed entries at the front are popped.
    pending: VecDeque<(i64, bool)>,
    /// One past the highest offset received.
    next: Option<i64>,
}

impl OffsetTracker {
    /// Notes a received offset. Returns `false` for an offset at or below one already received (a
    /// duplicate delivery to this actor: it is buffered or flushed already).
    pub fn receive(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|n| offset < n) {
            return false;
        }
        self.next = Some(offset + 1);
        self.pending.push_back((offset, false));
        true
    }

    /// Marks `offset` flushed. Unknown offsets are ignored (a report repeated by a drain).
    pub fn done(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            self.pending[i].1 = true;
        }
        while self.pending.front().is_some_and(|(_, flushed)| *flushed) {
            self.pending.pop_front();
        }
    }

    /// Returns the offset to commit: the lowest unflushed offset, or one past the highest received
    /// when everything is flushed; `None` before the first record.
    pub fn watermark(&self) -> Option<i64> {
        self.pending.front().map(|(o, _)| *o).or(self.next)
    }

    /// Returns the number of offsets not yet flushed (flushed ones behind an unflushed one count).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// One poll's records of this partition, in offset order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// Records of other partitions, or at or below an offset already received, are ignored.
    pub records: Vec<Polled>,
}

/// Flushes every run actor for `reason` and marks their offsets (shutdown, revoke).
#[derive(Message)]
#[rtype(result = "Result<(), ActorExit>")]
pub struct Drain {
    /// The reason the flushes are counted under (`shutdown` or `revoke`).
    pub reason: FlushReason,
}

/// Commits the current watermark now (after a drain, once queued flush reports are in).
#[derive(Message)]
#[rtype(result = "Result<Option<i64>, ActorExit>")]
pub struct CommitNow;

/// The outcome of one delivery's dead letters: their offsets, or why the sink refused them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeadLettered {
    /// The offsets written, or the sink's error.
    pub result: Result<Vec<i64>, DeadLetterError>,
}

/// Stops the actor now (its `killed` flag is already set).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KillNow;

/// A record that does not decode, on its way to the dead-letter sink.
struct Undecodable {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    reason: &'static str,
    detail: String,
}

struct RunSlot {
    addr: Addr<RunActor>,
    /// Pushes sent; an idle report is honoured only when the actor received them all.
    pushes: u64,
    /// Tells this actor from earlier ones of the run (their idle reports are ignored).
    incarnation: u64,
}

/// The routing of a delivery: resolves to whether it failed (a closed mailbox, a failed eviction).
type Routing<S> = Pin<Box<dyn ActorFuture<PartitionActor<S>, Output = bool>>>;

/// What each run actor answered to a [`FlushNow`]: the offsets it flushed, or a failure.
type FlushAnswers = Vec<(String, Result<Result<Vec<i64>, ActorExit>, MailboxError>)>;

/// What a partition actor is built from.
pub struct PartitionSetup<S> {
    /// The partition whose records the actor takes (others delivered to it are ignored).
    pub partition: i32,
    /// The group's epoch (unique per start).
    pub epoch: u64,
    /// The source's lease of the partition, presented with every commit.
    pub lease: Lease,
    /// The source, for commits.
    pub source: Arc<S>,
    /// Storage access for run actors and dead letters.
    pub flusher: Flusher,
    /// Run actor settings.
    pub run_config: Arc<RunActorConfig>,
    /// Failure reports to the supervisor.
    pub failures: UnboundedSender<Failure>,
    /// The group's kill flag.
    pub killed: Arc<AtomicBool>,
    /// How often the watermark is committed.
    pub commit_interval: Duration,
    /// Live run actors at most (at least 1).
    pub max_run_actors: usize,
    /// What the actor reads time from.
    pub clock: Clock,
}

/// One partition's actor (see the module docs).
pub struct PartitionActor<S: Source + 'static> {
    setup: PartitionSetup<S>,
    runs: FastMap<String, RunSlot>,
    /// The live runs by last delivery, for evictions.
    lru: RunLru,
    /// Run actors started so far (the next one's incarnation).
    incarnations: u64,
    tracker: OffsetTracker,
    committing: bool,
    /// Slots of dead-letter sends in flight.
    dead_letter_slots: Arc<Semaphore>,
}

impl<S: Source + 'static> PartitionActor<S> {
    /// Creates the actor.
    pub fn new(setup: PartitionSetup<S>) -> Self {
        Self {
            setup,
            runs: FastMap::default(),
            lru: RunLru::default(),
            incarnations: 0,
            tracker: OffsetTracker::default(),
            committing: false,
            dead_letter_slots: Arc::new(Semaphore::new(DEAD_LETTER_SLOTS as usize)),
        }
    }

    fn stop_if_killed(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.setup.killed.load(Ordering::Acquire) {
            ctx.stop();
            return true;
        }
        false
    }

    fn fail(&self, cause: FailureCause) {
        let s = &self.setup;
        let _ = s.failures.send(Failure { partition: s.partition, epoch: s.epoch, actor: ActorKind::Partition, cause });
    }

    fn slot(&mut self, run: &str, ctx: &mut Context<Self>) -> &mut RunSlot {
        match self.runs.entry(run.to_owned()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                let s = &self.setup;
                let me = ctx.address();
                self.incarnations += 1;
                let incarnation = self.incarnations;
                let actor = RunActor::new(
                    run.to_owned(),
                    incarnation,
                    s.partition,
                    s.epoch,
                    &s.run_config,
                    s.flusher.clone(),
                    me.clone().recipient(),
                    me.recipient(),
                    s.failures.clone(),
                    Arc::clone(&s.killed),
                );
                s.flusher.stats.runs.register(s.partition, run, s.epoch);
                v.insert(RunSlot { addr: actor.start(), pushes: 0, incarnation })
            }
        }
    }

    /// Hands each run's records to its actor, starting actors within the cap (see the module
    /// docs): evicts the least recently used runs not in this delivery when its new runs do not
    /// fit, and sends what still does not fit once the rest was accepted.
    fn route(&mut self, groups: Vec<(String, Vec<Entry>)>, ctx: &mut Context<Self>) -> Routing<S> {
        let cap = self.setup.max_run_actors.max(1);
        // Runs of this delivery are touched from here on, so they are never its victims.
        let since = self.lru.now();
        let mut fresh = 0;
        for (run, _) in &groups {
            if self.runs.contains_key(run) {
                self.lru.touch(run);
            } else {
                fresh += 1;
            }
        }
        let room = cap.saturating_sub(self.runs.len());
        if fresh > room {
            let victims = self.lru.oldest(fresh - room, since);
            if !victims.is_empty() {
                return Box::pin(self.evict(victims).then(move |ok, act, ctx| -> Routing<S> {
                    if ok { act.route(groups, ctx) } else { Box::pin(actix::fut::ready(true)) }
                }));
            }
        }
        let mut sends = Vec::with_capacity(groups.len());
        let mut rest = Vec::new();
        for (run, entries) in groups {
            if !self.runs.contains_key(&run) && self.runs.len() >= cap {
                rest.push((run, entries));
                continue;
            }
            self.lru.touch(&run);
            let slot = self.slot(&run, ctx);
            slot.pushes += 1;
            sends.push(slot.addr.send(Push { entries }));
        }
        let pushed =
            async move { futures_util::future::join_all(sends).await.iter().any(Result::is_err) }.into_actor(self);
        if rest.is_empty() {
            return Box::pin(pushed);
        }
        Box::pin(pushed.then(move |closed, act, ctx| -> Routing<S> {
            if closed || act.setup.killed.load(Ordering::Acquire) {
                Box::pin(actix::fut::ready(closed))
            } else {
                act.route(rest, ctx)
            }
        }))
    }

    /// Evicts `victims`: takes what each buffered ([`Surrender`]), flushes it (small runs together,
    /// see [`evict_flush`]), marks their offsets once committed, then stops and forgets them.
    /// Resolves to `false` when something could not be flushed: the failure is reported, the
    /// group restarts from the committed offset, which is still below the records not flushed.
    fn evict(&mut self, victims: Vec<String>) -> impl ActorFuture<Self, Output = bool> + 'static {
        let mut actors = Vec::with_capacity(victims.len());
        for run in victims {
            self.lru.remove(&run);
            if let Some(slot) = self.runs.get(&run) {
                actors.push((run, slot.addr.clone()));
            }
        }
        let flusher = self.setup.flusher.clone();
        let budget = self.setup.run_config.budget;
        evict_flush(flusher, budget, actors).into_actor(self).map(|eviction, act, _ctx| {
            eviction.flushed.into_iter().for_each(|o| act.tracker.done(o));
            act.note_unflushed();
            let s = &act.setup;
            let mut evicted = 0;
            for run in eviction.emptied {
                if let Some(slot) = act.runs.remove(&run) {
                    s.flusher.stats.runs.unregister(s.partition, &run, s.epoch);
                    slot.addr.do_send(Stop);
                    evicted += 1;
                }
            }
            s.flusher.stats.note_evicted(evicted);
            tracing::debug!(partition = s.partition, evicted, live = act.runs.len(), "run actors evicted");
            match eviction.failed {
                None => true,
                Some(failure) => {
                    tracing::warn!(partition = s.partition, cause = %failure.cause, error = %failure.error, "eviction flush failed");
                    let _ = s.failures.send(Failure {
                        partition: s.partition,
                        epoch: s.epoch,
                        actor: ActorKind::Run,
                        cause: failure.cause,
                    });
                    false
                }
            }
        })
    }

    /// Publishes the partition's mailbox depth: records delivered and not yet flushed.
    fn note_unflushed(&self) {
        crate::metrics::ingest_unflushed_records(self.setup.partition, self.tracker.pending());
    }

    fn commit_tick(&mut self, ctx: &mut Context<Self>) {
        if self.stop_if_killed(ctx) || self.committing {
            return;
        }
        let Some(watermark) = self.tracker.watermark() else { return };
        let partition = self.setup.partition;
        let stats = Arc::clone(&self.setup.flusher.stats);
        if stats.recovery.partition(partition).committed.is_some_and(|c| c >= watermark) {
            return;
        }
        self.committing = true;
        let source = Arc::clone(&self.setup.source);
        let lease = self.setup.lease;
        let me = ctx.address();
        // A task of its own: a commit in flight when the group is stopped (a revocation) still
        // ends, refused as stale, and says so, instead of vanishing with the actor.
        actix_rt::spawn(async move {
            let failed = match source.commit_leased(lease, watermark).await {
                Ok(()) => {
                    stats.note_committed(partition, watermark);
                    None
                }
                Err(e) if e.is_stale() => {
                    note_stale(&stats, lease, watermark, &e);
                    None
                }
                Err(e) => {
                    tracing::warn!(partition, offset = watermark, error = %e, "offset commit failed");
                    Some(e.is_retryable())
                }
            };
            me.do_send(Committed { failed });
        });
    }
}

/// The end of a periodic commit: `failed` is `None` when it succeeded or was refused as stale,
/// else whether the error is retryable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    /// `Some(retryable)` when the commit failed.
    pub failed: Option<bool>,
}

impl<S: Source + 'static> Handler<Committed> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Self::Context) {
        self.committing = false;
        if self.stop_if_killed(ctx) {
            return;
        }
        if msg.failed == Some(false) {
            self.fail(FailureCause::SourceCommit);
        }
    }
}

/// A commit refused because the partition was revoked since the lease: another consumer owns it,
/// and the supervisor stops this group when it handles the revocation.
fn note_stale(stats: &Stats, lease: Lease, offset: i64, e: &SourceError) {
    stats.note_stale_commit();
    tracing::info!(
        partition = lease.partition,
        epoch = lease.epoch,
        offset,
        error = %e,
        "commit of a revoked partition refused, ignored"
    );
}

impl<S: Source + 'static> Actor for PartitionActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(PARTITION_MAILBOX);
        ctx.run_interval(self.setup.commit_interval, |act, ctx| act.commit_tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let s = &self.setup;
        for (run, slot) in self.runs.drain() {
            s.flusher.stats.runs.unregister(s.partition, &run, s.epoch);
            slot.addr.do_send(Stop);
        }
        // What it held is redelivered to the next incarnation (or another consumer), which counts it.
        crate::metrics::ingest_unflushed_records(s.partition, 0);
        tracing::debug!(partition = s.partition, epoch = s.epoch, "partition actor stopped");
    }
}

impl<S: Source + 'static> Handler<Deliver> for PartitionActor<S> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) -> Self::Result {
        if self.stop_if_killed(ctx) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(())));
        }
        let started = self.setup.clock.now();
        let partition = self.setup.partition;
        let mut groups: Vec<(String, Vec<Entry>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut dead: Vec<Undecodable> = Vec::new();
        for Polled { partition: from, offset, message } in msg.records {
            if from != partition || !self.tracker.receive(offset) {
                continue;
            }
            match message {
                Ok(message) => {
                    let i = match index.get(message.run_id.as_str()) {
                        Some(&i) => i,
                        None => {
                            index.insert(message.run_id.clone(), groups.len());
                            groups.push((message.run_id.clone(), Vec::new()));
                            groups.len() - 1
                        }
                    };
                    groups[i].1.push(Entry { partition, offset, message });
                }
                Err(Undecoded { error, key, value }) => {
                    let reason = error.reason();
                    tracing::warn!(partition, offset, reason, error = %error, "record does not decode");
                    dead.push(Undecodable { offset, key, value, reason, detail: error.to_string() });
                }
            }
        }
        let flusher = self.setup.flusher.clone();
        let slots = Arc::clone(&self.dead_letter_slots);
        let me = ctx.address();
        let routed = self.route(groups, ctx);
        let fut = routed.then(move |closed, act, _ctx| {
            async move {
                if !dead.is_empty() {
                    // Sent by a task of their own, so a slow sink delays only the commit past
                    // them; with every slot taken the delivery waits (back-pressure).
                    if let Ok(permit) = slots.acquire_owned().await {
                        actix_rt::spawn(send_dead_letters(flusher, partition, dead, permit, me));
                    }
                }
                closed
            }
            .into_actor(act)
        });
        AtomicResponse::new(Box::pin(fut.map(move |closed, act, ctx| {
            crate::metrics::ingest_batch_processed(act.setup.clock.since(started).as_secs_f64());
            act.note_unflushed();
            if closed && !act.stop_if_killed(ctx) {
                act.fail(FailureCause::MailboxClosed);
            }
        })))
    }
}

/// What an eviction did: the offsets committed, the runs that hold nothing any more (stopped
/// next), and the first flush failure, if any (a run that failed to surrender reported itself).
struct Eviction {
    flushed: Vec<i64>,
    emptied: Vec<String>,
    failed: Option<FlushFailure>,
}

/// Takes the buffered batches of the evicted `actors` ([`FLUSH_CONCURRENCY`] at a time) and
/// flushes them: the single open batch of each small run packed with others' under `budget` into
/// shared transactions (each run's checkpoint in it), anything else (several batches, a
/// `delete_run`, the Kafka dead-letter sink, which needs the per-run forwarding) one run at a time.
async fn evict_flush(flusher: Flusher, budget: BatchBudget, actors: Vec<(String, Addr<RunActor>)>) -> Eviction {
    use futures_util::StreamExt;
    let answers: Vec<_> = futures_util::stream::iter(actors)
        .map(|(run, addr)| async move {
            let answer = addr.send(Surrender).await;
            (run, answer)
        })
        .buffer_unordered(FLUSH_CONCURRENCY)
        .collect()
        .await;
    let share = !flusher.dead_letters.forwards();
    let mut eviction = Eviction { flushed: Vec::new(), emptied: Vec::new(), failed: None };
    let mut surrendered_all = true;
    let mut shared: Vec<Vec<(String, Batch)>> = Vec::new();
    let (mut bytes, mut messages) = (0usize, 0usize);
    let mut alone: Vec<(String, Vec<Batch>)> = Vec::new();
    for (run, answer) in answers {
        let Ok(Ok(Surrendered { flushed, mut batches })) = answer else {
            surrendered_all = false;
            continue;
        };
        eviction.flushed.extend(flushed);
        eviction.emptied.push(run.clone());
        if share && batches.len() == 1 && batches[0].reason == FlushReason::Evict {
            let Some(batch) = batches.pop() else { continue };
            let fits = bytes + batch.estimated_bytes <= budget.max_bytes
                && messages + batch.entries.len() <= budget.max_messages;
            if !fits || shared.is_empty() {
                shared.push(Vec::new());
                (bytes, messages) = (0, 0);
            }
            bytes += batch.estimated_bytes;
            messages += batch.entries.len();
            if let Some(pack) = shared.last_mut() {
                pack.push((run, batch));
            }
        } else if !batches.is_empty() {
            alone.push((run, batches));
        }
    }
    if !surrendered_all {
        // The run that failed reported itself; the group restarts and replays the rest.
        return eviction;
    }
    let flushes =
        shared.into_iter().map(|pack| futures_util::future::Either::Left(flusher.clone().flush_shared(pack))).chain(
            alone
                .into_iter()
                .map(|(run, batches)| futures_util::future::Either::Right(flusher.clone().flush(run, batches, None))),
        );
    let results: Vec<_> = futures_util::stream::iter(flushes).buffer_unordered(FLUSH_CONCURRENCY).collect().await;
    for result in results {
        match result {
            Ok(done) => eviction.flushed.extend(done),
            Err(failure) => {
                eviction.flushed.extend_from_slice(&failure.flushed);
                eviction.failed.get_or_insert(failure);
            }
        }
    }
    eviction
}

/// Asks each run actor to flush for `reason`, [`FLUSH_CONCURRENCY`] at a time: a request is sent
/// only when its turn comes, so the others do not open their transactions meanwhile.
async fn flush_all(actors: Vec<(String, Addr<RunActor>)>, reason: FlushReason) -> FlushAnswers {
    use futures_util::StreamExt;
    futures_util::stream::iter(actors)
        .map(|(run, addr)| async move {
            let answer = addr.send(FlushNow { reason }).await;
            (run, answer)
        })
        .buffer_unordered(FLUSH_CONCURRENCY)
        .collect()
        .await
}

/// Sends one delivery's undecodable records to the dead-letter sink and reports the outcome to the
/// partition actor; the offsets count as done only once the sink acknowledged every letter.
async fn send_dead_letters<S: Source + 'static>(
    flusher: Flusher,
    partition: i32,
    dead: Vec<Undecodable>,
    _slot: OwnedSemaphorePermit,
    to: Addr<PartitionActor<S>>,
) {
    let letters = &flusher.dead_letters;
    let rejected: Vec<Rejected<'_>> = dead
        .iter()
        .map(|d| Rejected {
            topic: &letters.topic,
            partition,
            offset: d.offset,
            key: d.key.as_deref(),
            value: &d.value,
            reason: d.reason,
            detail: d.detail.clone(),
            message_type: None,
        })
        .collect();
    let result = match letters.sink.send_all(&rejected).await {
        Ok(()) => Ok(rejected
            .iter()
            .map(|r| {
                flusher.stats.note_undecodable(r.reason);
                r.offset
            })
            .collect()),
        Err(e) => Err(e),
    };
    // A report, like `Flushed`: the actor may be gone (killed, revoked), then nothing is marked
    // and the records are read again.
    to.do_send(DeadLettered { result });
}

impl<S: Source + 'static> Handler<DeadLettered> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: DeadLettered, ctx: &mut Self::Context) {
        if self.stop_if_killed(ctx) {
            return;
        }
        match msg.result {
            Ok(offsets) => {
                offsets.into_iter().for_each(|o| self.tracker.done(o));
                self.note_unflushed();
            }
            Err(e) => {
                tracing::warn!(partition = self.setup.partition, error = %e, "dead letters could not be written");
                self.fail(FailureCause::DeadLetter);
            }
        }
    }
}

impl<S: Source + 'static> Handler<Flushed> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Flushed, ctx: &mut Self::Context) {
        if self.stop_if_killed(ctx) {
            return;
        }
        for offset in msg.offsets {
            self.tracker.done(offset);
        }
        self.note_unflushed();
    }
}

impl<S: Source + 'static> Handler<Idle> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, msg: Idle, ctx: &mut Self::Context) {
        if self.stop_if_killed(ctx) {
            return;
        }
        if self.runs.get(&msg.run).is_some_and(|slot| slot.incarnation == msg.incarnation && slot.pushes == msg.pushes)
            && let Some(slot) = self.runs.remove(&msg.run)
        {
            self.lru.remove(&msg.run);
            let s = &self.setup;
            s.flusher.stats.runs.unregister(s.partition, &msg.run, s.epoch);
            slot.addr.do_send(Stop);
            tracing::debug!(partition = s.partition, run = %msg.run, "idle run actor stopped");
        }
    }
}

impl<S: Source + 'static> Handler<Drain> for PartitionActor<S> {
    type Result = AtomicResponse<Self, Result<(), ActorExit>>;

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) -> Self::Result {
        if self.stop_if_killed(ctx) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorExit::Killed(ActorKind::Partition)))));
        }
        // Flushed with bounded concurrency (at scale, all at once would fail with
        // `transaction_too_old`); the records of a run that still fails are not marked, so the
        // committed offset stays below them and they are replayed at the next start.
        let actors: Vec<_> = self.runs.iter().map(|(run, slot)| (run.clone(), slot.addr.clone())).collect();
        let slots = Arc::clone(&self.dead_letter_slots);
        let reason = msg.reason;
        let fut = async move {
            // Dead letters in flight first: their reports queue before the commit that follows.
            drop(slots.acquire_many_owned(DEAD_LETTER_SLOTS).await);
            flush_all(actors, reason).await
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|answers, act, _ctx| {
            let mut failed = 0usize;
            for (_, result) in answers {
                match result {
                    Ok(Ok(offsets)) => offsets.into_iter().for_each(|o| act.tracker.done(o)),
                    _ => failed += 1,
                }
            }
            act.note_unflushed();
            if failed > 0 { Err(ActorExit::RunsNotFlushed(failed)) } else { Ok(()) }
        })))
    }
}

impl<S: Source + 'static> Handler<CommitNow> for PartitionActor<S> {
    type Result = AtomicResponse<Self, Result<Option<i64>, ActorExit>>;

    fn handle(&mut self, _: CommitNow, ctx: &mut Self::Context) -> Self::Result {
        if self.stop_if_killed(ctx) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorExit::Killed(ActorKind::Partition)))));
        }
        let watermark = self.tracker.watermark();
        let partition = self.setup.partition;
        let lease = self.setup.lease;
        let source = Arc::clone(&self.setup.source);
        let stats = Arc::clone(&self.setup.flusher.stats);
        let fut = async move {
            let Some(watermark) = watermark else { return Ok(None) };
            match source.commit_leased(lease, watermark).await {
                Ok(()) => {
                    stats.note_committed(partition, watermark);
                    Ok(Some(watermark))
                }
                Err(e) if e.is_stale() => {
                    note_stale(&stats, lease, watermark, &e);
                    Ok(None)
                }
                Err(e) => Err(ActorExit::Commit(e)),
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self)))
    }
}

impl<S: Source + 'static> Handler<KillNow> for PartitionActor<S> {
    type Result = ();

    fn handle(&mut self, _: KillNow, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_picks_the_least_recently_used_runs_never_those_of_the_current_delivery() {
        let mut lru = RunLru::default();
        for run in ["a", "b", "c"] {
            lru.touch(run);
        }
        lru.touch("a");
        assert_eq!(lru.oldest(2, lru.now()), ["b", "c"]);
        let delivery = lru.now();
        lru.touch("b"); // b is in the delivery being routed
        assert_eq!(lru.oldest(3, delivery), ["c", "a"], "b is used by this delivery");
        lru.remove("c");
        assert_eq!((lru.oldest(3, delivery), lru.len()), (vec!["a".to_owned()], 2));
        lru.remove("a");
        lru.remove("b");
        assert!(lru.is_empty() && lru.oldest(1, lru.now()).is_empty());
    }

    #[test]
    fn watermark_is_the_lowest_unflushed_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.watermark(), None);
        for o in 10..15 {
            assert!(t.receive(o));
        }
        assert!(!t.receive(12), "a duplicate delivery is refused");
        assert_eq!(t.watermark(), Some(10));
        t.done(11);
        t.done(13);
        assert_eq!(t.watermark(), Some(10));
        t.done(10);
        assert_eq!(t.watermark(), Some(12));
        t.done(12);
        t.done(14);
        assert_eq!((t.watermark(), t.pending()), (Some(15), 0));
        t.done(99); // unknown: ignored
        assert!(t.receive(20), "gaps (compacted offsets) are fine");
        assert_eq!(t.watermark(), Some(20));
    }
}
