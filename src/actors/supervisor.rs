//! The supervisor: runs the source loop, owns the partition groups (a partition actor and its run
//! actors) and restarts them.
//!
//! Source loop: each step takes one poll of the source, reacts to the assignment changes that
//! poll saw, starts the next poll (on the offload runtime, so it reads while this step decodes and
//! routes), then hands each partition's records to its partition actor with `send().await` on a
//! bounded mailbox, all partitions concurrently, and waits until every delivery was routed. The
//! step after takes only that one poll, so a slow store (full run mailboxes, blocked flushes) stops
//! polling after one poll ahead: the source is simply not read, and the wait is counted as
//! back-pressure. Memory is bounded by two polls plus the bounded mailboxes plus the runs' batches.
//!
//! Supervision (one level, restart policy owned here, not by actix):
//! - a partition group fails (a storage error after retries, a closed mailbox) or is killed: its
//!   actors are stopped without flushing, the partition is paused, and after a backoff (exponential
//!   per partition, reset after a stable period; none for chaos kills, which are not failures) it
//!   is seeked back to its floor (the last committed offset, or the first offset received when
//!   nothing was committed yet) and a fresh group starts;
//! - the source loop fails (a poll error) or is killed: every partition is restarted that way, since
//!   polled records may have been dropped anywhere.
//!
//! Rebalances (Kafka; the embedded queue has none): the source reports them after the poll in
//! which they happened ([`Source::take_assignment_events`]), and they are handled before that
//! poll's records are routed. A revoked partition's group is stopped like a kill, without flushing
//! and without a restart: its buffered records are dropped, and the new owner reads them again
//! from the group's committed offset. A commit of the old group still in flight is refused by the
//! source as stale and ignored. An assigned partition gets a fresh group holding the new lease,
//! which every commit of the group presents. A poll never returns records read under a lease it
//! revoked, so each record reaches the group of the lease it was read under.
//!
//! Restarts (a seek to the floor and a fresh group) are applied only when no poll is in flight,
//! just before the next poll starts, and after the routes of the step's records were taken: a
//! partition waiting for its restart has no route, so its records read before the seek are dropped
//! and read again from the floor, and no record read before a seek can reach a group started after
//! it (the fence that keeps per-run order across restarts). A group killed while the next poll is
//! in flight loses its route the same way, and its restart waits for that poll to land.
//!
//! Why this is exactly once: a committed offset `c` means every record below `c` was applied (its
//! run's transaction committed with its checkpoint) or dead-lettered. After any restart the
//! partition replays from `c` or lower; every run applies its records in offset order, so a
//! replayed record at or below its run's checkpoint was applied and is skipped inside the
//! transaction that would apply it, and one above it was not and is applied. A flush still in
//! flight in a killed actor races a replay of the same records: both transactions read the
//! checkpoint, so one of them conflicts and, retried, skips them. The same holds across consumers
//! after a rebalance: the new owner starts at the committed offset, the old owner's late flushes
//! race its replay through the checkpoints, and the old owner's late commits are refused. Nothing
//! in memory is needed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use super::flush::Flusher;
use super::models::{
    ActorExit, ActorKind, Failure, FailureCause, KillTarget, PipelineConfig, PipelineError, Polled, RunActorConfig,
};
use super::partition_actor::{CommitNow, Deliver, Drain, KillNow, PartitionActor, PartitionSetup};
use super::stats::Stats;
use crate::clock::Clock;
use crate::ingest::{AssignmentEvent, FlushReason, Lease, Record, Source, SourceError};

/// Requests of the [`PipelineHandle`](super::PipelineHandle), on a channel of their own so they
/// never queue behind data.
pub enum Control {
    /// Kills an actor without flushing; answers what was killed.
    Kill(KillTarget, oneshot::Sender<Result<String, PipelineError>>),
    /// Flushes everything, commits, stops.
    Shutdown(oneshot::Sender<Result<(), PipelineError>>),
}

/// How long the last pass of the dead-letter forwarder may take at shutdown.
const FORWARDER_FINAL_PASS: Duration = Duration::from_secs(10);

/// How long the last reading of the consumer lag may take at shutdown.
const LAG_FINAL_PASS: Duration = Duration::from_secs(5);

/// Exponential backoff of restarts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    last: Option<Instant>,
}

impl Backoff {
    /// Creates a backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, attempt: 0, last: None }
    }

    /// Returns the delay before the next restart at `now`: `initial · 2^n`, capped at `max`, where
    /// `n` counts restarts since the last period of `4 · max` without one.
    pub fn next(&mut self, now: Instant) -> Duration {
        if self.last.is_some_and(|last| now.duration_since(last) > self.max * 4) {
            self.attempt = 0;
        }
        let delay = self.initial.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.last = Some(now);
        delay
    }
}

struct Group<S: Source + 'static> {
    addr: Addr<PartitionActor<S>>,
    killed: Arc<AtomicBool>,
    epoch: u64,
    lease: Lease,
}

/// Where the step of the source loop that is waited on may be cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A poll: never cut midway (a cut could lose records the source already handed out).
    Poll,
    /// Deliveries to partition actors: aborted by a source kill.
    Dispatch,
}

/// A poll of the source in flight.
type PollTask = tokio::task::JoinHandle<PollOutcome>;

/// What one poll returned, with what it saw of the assignment, both taken in the poll's own task
/// as it ended: a poll that waits to be joined while the next step's records are routed must not
/// have its records matched against assignment changes made after it read them.
struct PollOutcome {
    records: Result<Vec<Record>, SourceError>,
    /// The assignment changes the poll saw, oldest first.
    events: Vec<AssignmentEvent>,
    /// The lease each partition of `records` was read under (`None`: no longer assigned).
    leases: BTreeMap<i32, Option<Lease>>,
}

/// What a shutdown request left to answer: `Some(None)` when every handle was dropped.
type ShutdownReply = Option<Option<oneshot::Sender<Result<(), PipelineError>>>>;

/// The supervisor (see the module docs).
pub struct Supervisor<S: Source + 'static> {
    source: Arc<S>,
    config: PipelineConfig,
    flusher: Flusher,
    run_config: Arc<RunActorConfig>,
    stats: Arc<Stats>,
    failures_tx: UnboundedSender<Failure>,
    failures_rx: UnboundedReceiver<Failure>,
    control: Receiver<Control>,
    groups: BTreeMap<i32, Group<S>>,
    /// Partitions waiting for a restart, with the time it is due.
    pending: BTreeMap<i32, Instant>,
    backoff: BTreeMap<i32, Backoff>,
    source_backoff: Backoff,
    next_epoch: u64,
}

impl<S: Source + 'static> Supervisor<S> {
    /// Creates the supervisor; [`Supervisor::run`] starts everything.
    pub fn new(
        source: Arc<S>,
        config: PipelineConfig,
        flusher: Flusher,
        stats: Arc<Stats>,
        control: Receiver<Control>,
    ) -> Self {
        let (failures_tx, failures_rx) = unbounded_channel();
        let run_config = Arc::new(RunActorConfig {
            budget: config.budget,
            idle_timeout: config.run_idle_timeout,
            clock: config.clock,
        });
        let source_backoff = Backoff::new(config.restart_backoff_initial, config.restart_backoff_max);
        Self {
            source,
            config,
            flusher,
            run_config,
            stats,
            failures_tx,
            failures_rx,
            control,
            groups: BTreeMap::new(),
            pending: BTreeMap::new(),
            backoff: BTreeMap::new(),
            source_backoff,
            next_epoch: 1,
        }
    }

    /// Runs until shutdown (or until every handle is dropped, which also drains).
    pub async fn run(mut self) {
        self.stats.set_running(true);
        // A source may have partitions before its first poll (the embedded queue's are static).
        self.sync_assignment();
        tracing::info!(partitions = ?self.source.assignment(), "ingest pipeline started");
        let forwarder = self.spawn_forwarder();
        let (lag_stop, lag_task) = self.spawn_lag_reporter();
        let mut shutdown: ShutdownReply = None;
        // The poll started while the previous step's records were decoded and routed.
        let mut next_poll: Option<PollTask> = None;
        while shutdown.is_none() {
            let poll = match next_poll.take() {
                Some(poll) => poll,
                None => {
                    self.restart_due();
                    self.start_poll()
                }
            };
            let (polled, killed) = self.wait(poll, Step::Poll, &mut shutdown).await;
            // Rebalances ran inside the poll: react before routing any of its records, so each
            // record reaches the group of the lease it was read under.
            let (polled, leases) = match polled {
                Ok(outcome) => {
                    self.handle_assignment_events(outcome.events);
                    (Ok(outcome.records), outcome.leases)
                }
                Err(e) => {
                    // The task ended before it took the poll's events: take them here.
                    self.handle_assignment_events(self.source.take_assignment_events());
                    (Err(e), BTreeMap::new())
                }
            };
            let records = match polled {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retryable = e.is_retryable(), "source poll failed");
                    self.restart_all(FailureCause::SourceError);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "source poll panicked");
                    self.restart_all(FailureCause::Panic);
                    continue;
                }
            };
            if records.is_empty() {
                if killed {
                    self.restart_all(FailureCause::Chaos);
                }
                continue;
            }
            crate::metrics::ingest_polled(records.len());
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            for record in records {
                by_partition.entry(record.partition).or_default().push(record);
            }
            // Noted even when a kill drops them: a restart replays from the floor this sets.
            for (p, recs) in &by_partition {
                if let (Some(first), Some(last)) = (recs.first(), recs.last()) {
                    self.stats.note_polled(*p, first.offset, last.offset, recs.len());
                }
            }
            if killed {
                self.restart_all(FailureCause::Chaos);
                continue;
            }
            // Routes are taken before any restart below: a record read before a seek never
            // reaches a group started after it (a partition waiting for its restart has no route,
            // and its records are read again from its floor). A group holding another lease than
            // the one the records were read under has none either: the lease changed after the
            // poll returned (its new owner reads from the committed offset).
            let routes: Vec<(i32, Addr<PartitionActor<S>>)> = self
                .groups
                .iter()
                .filter(|(p, g)| leases.get(p) == Some(&Some(g.lease)))
                .map(|(p, g)| (*p, g.addr.clone()))
                .collect();
            // The next poll reads while these records are decoded and routed. Restarts due are
            // applied first, since a seek must never race a poll in flight; the next step's
            // records then go to the groups alive when it is joined.
            if shutdown.is_none() {
                self.restart_due();
                next_poll = Some(self.start_poll());
            }
            let offload = self.flusher.offload.clone();
            let deliveries =
                actix_rt::spawn(dispatch(by_partition, routes, Arc::clone(&self.stats), self.config.clock, offload));
            let (delivered, killed) = self.wait(deliveries, Step::Dispatch, &mut shutdown).await;
            match delivered {
                Ok(Ok(())) if !killed => {}
                Ok(Ok(())) => self.restart_all(FailureCause::Chaos),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "records not decoded; replaying them");
                    self.restart_all(FailureCause::Panic);
                }
                Err(e) if e.is_cancelled() => self.restart_all(FailureCause::Chaos),
                Err(e) => {
                    tracing::error!(error = %e, "source loop panicked");
                    self.restart_all(FailureCause::Panic);
                }
            }
        }
        if let Some(poll) = next_poll {
            // Its records are dropped: they are not committed, so the next consumer reads them.
            let _ = poll.await;
        }
        let result = self.shutdown().await;
        let _ = lag_stop.send(());
        let _ = lag_task.await;
        // After the last commits: a clean shutdown of a caught-up pipeline leaves the gauge at 0.
        let _ = tokio::time::timeout(LAG_FINAL_PASS, super::lag::report_once(&*self.source)).await;
        if let Some((stop, task)) = forwarder {
            let _ = stop.send(());
            let _ = task.await;
            let last = self.flusher.dead_letters.forward_all();
            match tokio::time::timeout(FORWARDER_FINAL_PASS, last).await {
                Ok(Ok(n)) => tracing::debug!(forwarded = n, "last dead-letter pass done"),
                Ok(Err(e)) => tracing::warn!(error = %e, "last dead-letter pass failed; letters stay staged"),
                Err(_) => tracing::warn!("last dead-letter pass timed out; letters stay staged"),
            }
        }
        if let Err(e) = &result {
            tracing::warn!(error = %e, "ingest pipeline shut down with errors");
        }
        self.stats.set_running(false);
        tracing::info!("ingest pipeline stopped");
        if let Some(Some(reply)) = shutdown {
            let _ = reply.send(result);
        }
    }

    /// Starts one poll of the source: on the offload runtime when there is one, so the actor thread
    /// routes one step's records while the next is read (the embedded queue's read is synchronous
    /// and took as long as decoding and routing together, issue 12); in place otherwise.
    fn start_poll(&self) -> PollTask {
        let poll = poll_once(Arc::clone(&self.source), self.config.poll_max_records, self.config.poll_timeout);
        match &self.flusher.offload {
            Some(rt) => rt.spawn(poll),
            None => actix_rt::spawn(poll),
        }
    }

    /// Waits for a step of the source loop while serving control requests and failure reports.
    /// Returns the step's result and whether the source was killed meanwhile (which aborts a
    /// dispatch; a poll runs to its end and its records are dropped by the caller).
    async fn wait<T>(
        &mut self,
        mut step: tokio::task::JoinHandle<T>,
        kind: Step,
        shutdown: &mut ShutdownReply,
    ) -> (Result<T, tokio::task::JoinError>, bool) {
        let mut source_killed = false;
        loop {
            tokio::select! {
                biased;
                cmd = self.control.recv(), if shutdown.is_none() => match cmd {
                    None => *shutdown = Some(None),
                    Some(Control::Shutdown(reply)) => *shutdown = Some(Some(reply)),
                    Some(Control::Kill(target, reply)) => {
                        let result = self.kill(target);
                        if matches!(result, Ok(ref what) if what == "source") {
                            source_killed = true;
                            if kind == Step::Dispatch {
                                step.abort();
                            }
                        }
                        let _ = reply.send(result);
                    }
                },
                Some(failure) = self.failures_rx.recv() => self.on_failure(&failure),
                joined = &mut step => return (joined, source_killed),
            }
        }
    }

    /// Starts the task forwarding staged dead letters to the dead-letter topic, when that is the
    /// sink; returns its stop signal and handle.
    fn spawn_forwarder(&self) -> Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
        let letters = Arc::clone(&self.flusher.dead_letters);
        if !letters.forwards() {
            return None;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let interval = self.config.dead_letter_forward_interval;
        let task = actix_rt::spawn(async move {
            letters
                .run_forwarder(interval, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Some((stop, task))
    }

    /// Starts the task that sets the consumer-lag gauge from the source's backlog every
    /// `lag_interval`; returns its stop signal and handle.
    fn spawn_lag_reporter(&self) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let source = Arc::clone(&self.source);
        let (stop, stopped) = oneshot::channel::<()>();
        let interval = self.config.lag_interval;
        let task = actix_rt::spawn(async move {
            super::lag::run_reporter(&*source, interval, async move {
                let _ = stopped.await;
            })
            .await;
        });
        (stop, task)
    }

    fn start_group(&mut self, lease: Lease) {
        let partition = lease.partition;
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let killed = Arc::new(AtomicBool::new(false));
        let actor = PartitionActor::new(PartitionSetup {
            partition,
            epoch,
            lease,
            source: Arc::clone(&self.source),
            flusher: self.flusher.clone(),
            run_config: Arc::clone(&self.run_config),
            failures: self.failures_tx.clone(),
            killed: Arc::clone(&killed),
            commit_interval: self.config.commit_interval,
            max_run_actors: self.config.max_run_actors_per_partition,
            clock: self.config.clock,
        });
        self.groups.insert(partition, Group { addr: actor.start(), killed, epoch, lease });
        tracing::debug!(partition, epoch, lease_epoch = lease.epoch, "partition group started");
    }

    /// Stops a group's actors at once, without flushing.
    fn stop_group(group: &Group<S>) {
        group.killed.store(true, Ordering::SeqCst);
        group.addr.do_send(KillNow);
    }

    /// Stops a group without flushing and schedules its restart; `count` records the restart
    /// under `actor`/`cause` and applies the backoff.
    fn kill_group(&mut self, partition: i32, actor: ActorKind, cause: FailureCause, count: bool) {
        let Some(group) = self.groups.remove(&partition) else { return };
        Self::stop_group(&group);
        if let Err(e) = self.source.pause(partition) {
            tracing::warn!(partition, error = %e, "cannot pause partition");
        }
        let now = self.config.clock.now();
        let delay = if !count || cause == FailureCause::Chaos {
            Duration::ZERO
        } else {
            let (initial, max) = (self.config.restart_backoff_initial, self.config.restart_backoff_max);
            self.backoff.entry(partition).or_insert_with(|| Backoff::new(initial, max)).next(now)
        };
        if count {
            self.stats.note_restart(actor, cause);
        }
        tracing::info!(
            partition,
            epoch = group.epoch,
            actor = actor.as_str(),
            cause = cause.as_str(),
            delay_ms = delay.as_millis() as u64,
            "partition group stopped, restart scheduled"
        );
        self.pending.insert(partition, now + delay);
    }

    fn restart_all(&mut self, cause: FailureCause) {
        self.stats.note_restart(ActorKind::Source, cause);
        let delay = if cause == FailureCause::Chaos {
            Duration::ZERO
        } else {
            self.source_backoff.next(self.config.clock.now())
        };
        let partitions: Vec<i32> = self.groups.keys().copied().collect();
        for p in partitions {
            self.kill_group(p, ActorKind::Source, cause, false);
        }
        let due = self.config.clock.now() + delay;
        for at in self.pending.values_mut() {
            *at = (*at).max(due);
        }
    }

    /// Restarts the partitions whose restart is due: seek to the floor, resume, fresh group under
    /// the partition's current lease.
    fn restart_due(&mut self) {
        let now = self.config.clock.now();
        let due: Vec<i32> = self.pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
        for p in due {
            let Some(lease) = self.source.lease(p) else {
                // Revoked while waiting: the new owner replays it.
                self.pending.remove(&p);
                continue;
            };
            let floor = self.stats.recovery.partition(p).floor();
            if let Some(offset) = floor
                && let Err(e) = self.source.seek(p, offset)
            {
                tracing::warn!(partition = p, offset, error = %e, "cannot seek partition, retrying later");
                self.pending.insert(p, now + self.config.restart_backoff_max);
                continue;
            }
            if let Err(e) = self.source.resume(p) {
                tracing::warn!(partition = p, error = %e, "cannot resume partition");
            }
            self.pending.remove(&p);
            tracing::debug!(partition = p, floor = ?floor, "partition replays from its floor");
            self.start_group(lease);
        }
    }

    fn on_failure(&mut self, failure: &Failure) {
        if self.groups.get(&failure.partition).is_some_and(|g| g.epoch == failure.epoch) {
            tracing::warn!(partition = failure.partition, actor = %failure.actor, cause = %failure.cause, "actor failed");
            self.kill_group(failure.partition, failure.actor, failure.cause, true);
        }
    }

    fn kill(&mut self, target: KillTarget) -> Result<String, PipelineError> {
        let target = match target {
            KillTarget::Random => {
                let partitions: Vec<i32> = self.groups.keys().copied().collect();
                let seed = rand::random::<u32>() as usize;
                match seed % 3 {
                    0 => KillTarget::Source,
                    1 if !partitions.is_empty() => KillTarget::Partition(partitions[(seed / 3) % partitions.len()]),
                    _ => match self.stats.runs.pick(seed / 3) {
                        Some(run) => KillTarget::Run(run),
                        None => KillTarget::Source,
                    },
                }
            }
            other => other,
        };
        match target {
            KillTarget::Source => Ok("source".to_owned()),
            KillTarget::Partition(p) => {
                if !self.groups.contains_key(&p) {
                    return Err(PipelineError::NoSuchTarget(format!("partition {p} has no live actor")));
                }
                self.kill_group(p, ActorKind::Partition, FailureCause::Chaos, true);
                Ok(format!("partition {p}"))
            }
            KillTarget::Run(run) => {
                let entry = self
                    .stats
                    .runs
                    .find(&run)
                    .filter(|e| self.groups.get(&e.partition).is_some_and(|g| g.epoch == e.epoch))
                    .ok_or_else(|| PipelineError::NoSuchTarget(format!("run {run} has no live actor")))?;
                self.kill_group(entry.partition, ActorKind::Run, FailureCause::Chaos, true);
                Ok(format!("run {run} (partition {})", entry.partition))
            }
            KillTarget::Random => Err(PipelineError::NoSuchTarget("nothing to kill".to_owned())),
        }
    }

    /// Reacts to the rebalances of the last poll, in order: a revoked partition's actors stop at
    /// once, an assigned partition gets a fresh group under its new lease. Then checks that every
    /// group holds its partition's current lease (a safety net for sources without events).
    fn handle_assignment_events(&mut self, events: Vec<AssignmentEvent>) {
        for event in events {
            match event {
                AssignmentEvent::Revoked(partitions) => {
                    for p in partitions {
                        self.revoke(p);
                    }
                }
                AssignmentEvent::Assigned(leases) => {
                    self.stats.note_assigned(leases.len());
                    for lease in leases {
                        self.assign(lease);
                    }
                }
            }
        }
        self.sync_assignment();
    }

    /// Stops a revoked partition's group without flushing: its buffered records are dropped, the
    /// new owner reads them again from the committed offset, and the per-run checkpoints skip
    /// whatever was applied here. A flush or commit still in flight may finish; its commit is
    /// refused as stale.
    fn revoke(&mut self, partition: i32) {
        self.pending.remove(&partition);
        self.backoff.remove(&partition);
        let group = self.groups.remove(&partition);
        if let Some(group) = &group {
            Self::stop_group(group);
        }
        let uncommitted = self.stats.note_revoked(partition);
        tracing::info!(
            partition,
            epoch = group.as_ref().map(|g| g.epoch),
            uncommitted,
            "partition revoked: its actors stopped without flushing"
        );
    }

    /// Starts a fresh group for a newly assigned partition.
    fn assign(&mut self, lease: Lease) {
        let p = lease.partition;
        if let Some(group) = self.groups.remove(&p) {
            // Assigned again without a revocation first: what the old group holds is stale.
            Self::stop_group(&group);
        }
        self.pending.remove(&p);
        // A partition paused for a restart under its previous lease must not stay paused.
        if let Err(e) = self.source.resume(p) {
            tracing::debug!(partition = p, error = %e, "cannot resume newly assigned partition");
        }
        self.start_group(lease);
    }

    /// Makes the groups match the source's assignment and leases: stops groups of partitions no
    /// longer assigned or under an older lease, starts groups for assigned partitions without one.
    fn sync_assignment(&mut self) {
        let assigned = self.source.assignment();
        let known: Vec<i32> = self.groups.keys().chain(self.pending.keys()).copied().collect();
        for p in known {
            if !assigned.contains(&p) {
                self.revoke(p);
            } else if let Some(group) = self.groups.get(&p)
                && self.source.lease(p) != Some(group.lease)
            {
                self.revoke(p);
            }
        }
        let mut started = 0;
        for p in assigned {
            if !self.groups.contains_key(&p)
                && !self.pending.contains_key(&p)
                && let Some(lease) = self.source.lease(p)
            {
                self.start_group(lease);
                started += 1;
            }
        }
        if started > 0 {
            self.stats.note_assigned(started);
        }
    }

    async fn shutdown(&mut self) -> Result<(), PipelineError> {
        let groups = std::mem::take(&mut self.groups);
        let results =
            futures_util::future::join_all(groups.values().map(|g| drain_group(g, FlushReason::Shutdown))).await;
        for group in groups.values() {
            Self::stop_group(group);
        }
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| e.to_string())).collect();
        if errors.is_empty() { Ok(()) } else { Err(PipelineError::Flush(errors.join("; "))) }
    }
}

/// Flushes a group's runs, then commits its watermark (after the flush reports queued meanwhile).
async fn drain_group<S: Source + 'static>(group: &Group<S>, reason: FlushReason) -> Result<(), ActorExit> {
    group.addr.send(Drain { reason }).await??;
    group.addr.send(CommitNow).await?.map(|_| ())
}

/// The first step of the source loop: one poll, and what it saw of the assignment, taken at once
/// (a source changes leases only inside a poll, so these are the leases its records were read
/// under).
async fn poll_once<S: Source + 'static>(source: Arc<S>, max_records: usize, timeout: Duration) -> PollOutcome {
    let records = source.poll(max_records, timeout).await;
    let events = source.take_assignment_events();
    let mut leases = BTreeMap::new();
    for record in records.iter().flatten() {
        leases.entry(record.partition).or_insert_with(|| source.lease(record.partition));
    }
    PollOutcome { records, events, leases }
}

/// The second step: decodes each partition's records, then delivers them to its actor and waits
/// until all are routed. Fails when a decoding task ended without an answer.
async fn dispatch<S: Source + 'static>(
    by_partition: BTreeMap<i32, Vec<Record>>,
    routes: Vec<(i32, Addr<PartitionActor<S>>)>,
    stats: Arc<Stats>,
    clock: Clock,
    offload: Option<tokio::runtime::Handle>,
) -> Result<(), String> {
    let decoded = decode_partitions(by_partition, offload).await?;
    let started = clock.now();
    // A partition without a route is waiting for a restart: it replays from its floor.
    let sends = decoded.into_iter().filter_map(|(p, records)| {
        routes.iter().find(|(q, _)| *q == p).map(|(_, addr)| addr.send(Deliver { records }))
    });
    futures_util::future::join_all(sends).await;
    stats.note_backpressure(clock.since(started).as_secs_f64());
    Ok(())
}

/// Decodes each partition's records: on the offload runtime, one task per partition, when there
/// is one, so the actor thread only routes (decoding was about 40 % of its time in a profile of
/// a backlog, issue 12); in place otherwise (the paused-time harness). Decoding is pure, so a
/// task left running by a kill changes nothing.
async fn decode_partitions(
    by_partition: BTreeMap<i32, Vec<Record>>,
    offload: Option<tokio::runtime::Handle>,
) -> Result<Vec<(i32, Vec<Polled>)>, String> {
    let Some(rt) = offload else {
        return Ok(by_partition.into_iter().map(|(p, records)| (p, Polled::decode_all(records))).collect());
    };
    let tasks: Vec<_> = by_partition
        .into_iter()
        .map(|(p, records)| (p, rt.spawn(async move { Polled::decode_all(records) })))
        .collect();
    let mut decoded = Vec::with_capacity(tasks.len());
    for (p, task) in tasks {
        match task.await {
            Ok(polled) => decoded.push((p, polled)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(format!("decoding partition {p}: {e}")),
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::actors::flush::FLUSH_TRANSACTIONS;
    use crate::actors::testing::{self, FakeSource, create_run, metric, run_paused, until};
    use crate::ingest::BatchBudget;

    /// Starts a supervisor over `source` (counts flushes at 2 messages or 3 s); returns its control
    /// channel and its task.
    fn start(source: &Arc<FakeSource>, flusher: &Flusher) -> (mpsc::Sender<Control>, tokio::task::JoinHandle<()>) {
        start_polling(source, flusher, PipelineConfig::default().poll_max_records)
    }

    /// [`start`] with polls of at most `poll_max_records` records.
    fn start_polling(
        source: &Arc<FakeSource>,
        flusher: &Flusher,
        poll_max_records: usize,
    ) -> (mpsc::Sender<Control>, tokio::task::JoinHandle<()>) {
        let config = PipelineConfig {
            budget: BatchBudget { max_bytes: 1 << 20, max_messages: 2, max_age: Duration::from_secs(3) },
            clock: flusher.clock,
            poll_max_records,
            ..PipelineConfig::default()
        };
        let (control, control_rx) = mpsc::channel(8);
        let stats = Arc::clone(&flusher.stats);
        let supervisor = Supervisor::new(Arc::clone(source), config, flusher.clone(), stats, control_rx);
        (control, actix_rt::spawn(supervisor.run()))
    }

    async fn shutdown(control: mpsc::Sender<Control>, task: tokio::task::JoinHandle<()>) -> Result<(), PipelineError> {
        let (reply, answer) = oneshot::channel();
        control.send(Control::Shutdown(reply)).await.expect("the supervisor listens");
        let result = answer.await.expect("the supervisor answers");
        task.await.expect("the supervisor ends");
        result
    }

    #[test]
    fn a_partition_revoked_while_its_flush_is_in_flight_commits_nothing_past_it_and_the_flight_still_lands() {
        run_paused(async {
            let source = FakeSource::new(1);
            // No transaction slot: the run's first flight waits before opening its transaction.
            let flusher = testing::flusher(0).await;
            let (control, task) = start(&source, &flusher);
            source.append(0, create_run("r1"));
            source.append(0, metric("r1", 1));
            until("both records are polled", || flusher.stats.snapshot().consumed == 2).await;
            source.revoke(0);
            until("the revocation is handled", || flusher.stats.snapshot().revoked_partitions == 1).await;
            flusher.transactions.add_permits(FLUSH_TRANSACTIONS);
            until("the flight lands", || flusher.stats.snapshot().applied == 2).await;
            testing::advance(Duration::from_secs(1)).await;

            assert_eq!(testing::checkpoint(&flusher, "r1", 0).await, Some(1), "the new owner skips what landed");
            assert!(source.committed(0).unwrap_or(0) == 0, "the revoked group committed nothing past its flight");
            let counters = flusher.stats.snapshot();
            assert_eq!((counters.revoked_uncommitted, counters.restarts_total()), (2, 0), "{counters:?}");
            assert_eq!(shutdown(control, task).await.ok(), Some(()));
        });
    }

    #[test]
    fn the_mailbox_depth_gauge_counts_the_records_delivered_to_a_partition_and_not_yet_flushed() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // The actix system of the harness runs on this thread, so a thread-local recorder sees it.
        let _local = metrics::set_default_local_recorder(&recorder);
        let depth = || {
            let body = handle.render();
            body.lines()
                .find_map(|l| l.strip_prefix("matyan_ingest_unflushed_records{partition=\"0\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        run_paused(async {
            let source = FakeSource::new(1);
            // No transaction slot: the records stay in the run actor's batch.
            let flusher = testing::flusher(0).await;
            let (control, task) = start(&source, &flusher);
            source.append(0, create_run("r1"));
            source.append(0, metric("r1", 1));
            until("both records wait in the partition's actors", || depth() == Some(2.0)).await;
            flusher.transactions.add_permits(FLUSH_TRANSACTIONS);
            until("the flush empties them", || depth() == Some(0.0)).await;
            assert_eq!(flusher.stats.snapshot().applied, 2);
            assert_eq!(shutdown(control, task).await.ok(), Some(()));
        });
    }

    #[test]
    fn a_partition_killed_midway_seeks_back_to_its_committed_offset_and_replays_only_what_was_not_flushed() {
        run_paused(async {
            let source = FakeSource::new(1);
            let flusher = testing::flusher(FLUSH_TRANSACTIONS).await;
            let (control, task) = start(&source, &flusher);
            source.append(0, create_run("r1"));
            source.append(0, metric("r1", 1));
            until("the first batch is committed to the source", || source.committed(0) == Some(2)).await;
            source.append(0, metric("r1", 2));
            until("the third record is polled", || flusher.stats.snapshot().consumed == 3).await;

            let (reply, answer) = oneshot::channel();
            control.send(Control::Kill(KillTarget::Partition(0), reply)).await.expect("the supervisor listens");
            assert_eq!(answer.await.expect("answered").ok().as_deref(), Some("partition 0"));
            until("the restarted group replays", || flusher.stats.snapshot().consumed == 4).await;
            assert_eq!(source.seeks(), [(0, 2)], "the restart seeks to the committed offset");
            assert_eq!(shutdown(control, task).await.ok(), Some(()));

            assert_eq!(testing::checkpoint(&flusher, "r1", 0).await, Some(2));
            assert_eq!(source.committed(0), Some(3));
            let counters = flusher.stats.snapshot();
            assert_eq!((counters.applied, counters.replayed), (3, 0), "each record applied once: {counters:?}");
            assert_eq!(counters.restarts.get("partition/chaos"), Some(&1));
        });
    }

    #[test]
    fn a_partition_killed_while_the_next_poll_holds_its_records_replays_them_from_its_floor_once() {
        run_paused(async {
            let source = FakeSource::new(2);
            // No transaction slot: the first flight of partition 0's run waits, and the run holds
            // the next delivery behind it.
            let flusher = testing::flusher(0).await;
            source.append(0, create_run("r0"));
            for step in 1..8 {
                source.append(0, metric("r0", step));
            }
            source.append(1, create_run("r1"));
            source.append(1, metric("r1", 1));
            // Polls of four: partition 0's first four records (one flight), its next four (held
            // behind that flight), then partition 1's two while those wait to be routed.
            let (control, task) = start_polling(&source, &flusher, 4);
            until("the next poll reads partition 1 while partition 0's delivery waits", || source.position(1) == 2)
                .await;
            assert_eq!(flusher.stats.snapshot().applied, 0, "nothing landed yet");

            let (reply, answer) = oneshot::channel();
            control.send(Control::Kill(KillTarget::Partition(1), reply)).await.expect("the supervisor listens");
            assert_eq!(answer.await.expect("answered").ok().as_deref(), Some("partition 1"));
            flusher.transactions.add_permits(FLUSH_TRANSACTIONS);
            until("every record lands", || flusher.stats.snapshot().applied == 10).await;
            assert_eq!(source.seeks(), [(1, 0)], "partition 1 replays from its floor after the poll that held it");
            assert_eq!(shutdown(control, task).await.ok(), Some(()));

            assert_eq!(testing::checkpoint(&flusher, "r0", 0).await, Some(7));
            assert_eq!(testing::checkpoint(&flusher, "r1", 1).await, Some(1));
            assert_eq!((source.committed(0), source.committed(1)), (Some(8), Some(2)));
            let counters = flusher.stats.snapshot();
            assert_eq!((counters.applied, counters.replayed), (10, 0), "each record applied once: {counters:?}");
        });
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_stable_period() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(10), ms(80));
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..5).map(|i| b.next(t0 + ms(i))).collect();
        assert_eq!(delays, vec![ms(10), ms(20), ms(40), ms(80), ms(80)]);
        assert_eq!(b.next(t0 + ms(1_000)), ms(10));
    }
}
