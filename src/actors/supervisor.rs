//! The supervisor: runs the source loop, owns the partition groups (a partition actor and its run
//! actors) and restarts them.
//!
//! Source loop: each step polls the source once, then hands each partition's records to its
//! partition actor with `send().await` on a bounded mailbox, all partitions concurrently, and waits
//! until every delivery was routed. The next poll starts only then, so a slow store (full run
//! mailboxes, blocked flushes) stops polling altogether: the source is simply not read, and the
//! wait is counted as back-pressure. Memory is bounded by one poll plus the bounded mailboxes plus
//! the runs' batches.
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
//! Restarts are applied only between steps, when no delivery is in flight: a step's records were
//! read with the routes it started with, so no record read before a seek can reach a group started
//! after it (the fence that keeps per-run order across restarts).
//!
//! Why this is exactly once: a committed offset `c` means every record below `c` was applied (its
//! run's transaction committed with its checkpoint) or dead-lettered. After any restart the
//! partition replays from `c` or lower; every run applies its records in offset order, so a
//! replayed record at or below its run's checkpoint was applied and is skipped inside the
//! transaction that would apply it, and one above it was not and is applied. A flush still in
//! flight in a killed actor races a replay of the same records: both transactions read the
//! checkpoint, so one of them conflicts and, retried, skips them. Nothing in memory is needed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use super::partition_actor::{CommitNow, Deliver, Drain, KillNow, PartitionActor, PartitionSetup};
use super::pipeline::{KillTarget, PipelineConfig, PipelineError};
use super::run_actor::{Flusher, RunActorConfig};
use super::stats::Stats;
use crate::ingest::{FlushReason, Record, Source, SourceError};

/// A failure reported by an actor of partition group `epoch`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The partition of the group.
    pub partition: i32,
    /// The group's epoch; reports of an older group are ignored.
    pub epoch: u64,
    /// `partition` or `run`.
    pub actor: &'static str,
    /// Bounded cause label.
    pub cause: &'static str,
}

/// Requests of the [`PipelineHandle`](super::PipelineHandle), on a channel of their own so they
/// never queue behind data.
pub enum Control {
    /// Kills an actor without flushing; answers what was killed.
    Kill(KillTarget, oneshot::Sender<Result<String, PipelineError>>),
    /// Flushes everything, commits, stops.
    Shutdown(oneshot::Sender<Result<(), PipelineError>>),
}

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

const POLLING: u8 = 0;
const DISPATCHING: u8 = 1;

struct Group<S: Source + 'static> {
    addr: Addr<PartitionActor<S>>,
    killed: Arc<AtomicBool>,
    epoch: u64,
}

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
        let run_config = Arc::new(RunActorConfig { budget: config.budget, idle_timeout: config.run_idle_timeout });
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
        tracing::info!(partitions = ?self.source.assignment(), "ingest pipeline started");
        let mut shutdown: Option<Option<oneshot::Sender<Result<(), PipelineError>>>> = None;
        while shutdown.is_none() {
            self.sync_assignment().await;
            self.restart_due();
            let routes: Vec<(i32, Addr<PartitionActor<S>>)> =
                self.groups.iter().map(|(p, g)| (*p, g.addr.clone())).collect();
            let cancel = Arc::new(AtomicBool::new(false));
            let stage = Arc::new(AtomicU8::new(POLLING));
            let mut step = actix_rt::spawn(poll_and_dispatch(
                Arc::clone(&self.source),
                routes,
                Arc::clone(&self.stats),
                Arc::clone(&cancel),
                Arc::clone(&stage),
                self.config.poll_max_records,
                self.config.poll_timeout,
            ));
            let mut source_killed = false;
            let outcome = loop {
                tokio::select! {
                    biased;
                    cmd = self.control.recv(), if shutdown.is_none() => match cmd {
                        None => shutdown = Some(None),
                        Some(Control::Shutdown(reply)) => shutdown = Some(Some(reply)),
                        Some(Control::Kill(target, reply)) => {
                            let result = self.kill(target);
                            if matches!(result, Ok(ref what) if what == "source") {
                                source_killed = true;
                                cancel.store(true, Ordering::SeqCst);
                                if stage.load(Ordering::SeqCst) == DISPATCHING {
                                    step.abort();
                                }
                            }
                            let _ = reply.send(result);
                        }
                    },
                    Some(failure) = self.failures_rx.recv() => self.on_failure(&failure),
                    joined = &mut step => break joined,
                }
            };
            match outcome {
                Ok(Ok(_)) if !source_killed => {}
                Ok(Ok(_)) => self.restart_all("chaos"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retryable = e.is_retryable(), "source poll failed");
                    self.restart_all("source_error");
                }
                Err(e) if e.is_cancelled() => self.restart_all("chaos"),
                Err(e) => {
                    tracing::error!(error = %e, "source loop panicked");
                    self.restart_all("panic");
                }
            }
        }
        let result = self.shutdown().await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "ingest pipeline shut down with errors");
        }
        self.stats.set_running(false);
        tracing::info!("ingest pipeline stopped");
        if let Some(Some(reply)) = shutdown {
            let _ = reply.send(result);
        }
    }

    fn start_group(&mut self, partition: i32) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let killed = Arc::new(AtomicBool::new(false));
        let actor = PartitionActor::new(PartitionSetup {
            partition,
            epoch,
            source: Arc::clone(&self.source),
            flusher: self.flusher.clone(),
            run_config: Arc::clone(&self.run_config),
            failures: self.failures_tx.clone(),
            killed: Arc::clone(&killed),
            commit_interval: self.config.commit_interval,
        });
        self.groups.insert(partition, Group { addr: actor.start(), killed, epoch });
        tracing::debug!(partition, epoch, "partition group started");
    }

    /// Stops a group without flushing and schedules its restart; `count` records the restart
    /// under `actor`/`cause` and applies the backoff.
    fn kill_group(&mut self, partition: i32, actor: &'static str, cause: &'static str, count: bool) {
        let Some(group) = self.groups.remove(&partition) else { return };
        group.killed.store(true, Ordering::SeqCst);
        group.addr.do_send(KillNow);
        if let Err(e) = self.source.pause(partition) {
            tracing::warn!(partition, error = %e, "cannot pause partition");
        }
        let now = Instant::now();
        let delay = if !count || cause == "chaos" {
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
            actor,
            cause,
            delay_ms = delay.as_millis() as u64,
            "partition group stopped, restart scheduled"
        );
        self.pending.insert(partition, now + delay);
    }

    fn restart_all(&mut self, cause: &'static str) {
        self.stats.note_restart("source", cause);
        let delay = if cause == "chaos" { Duration::ZERO } else { self.source_backoff.next(Instant::now()) };
        let partitions: Vec<i32> = self.groups.keys().copied().collect();
        for p in partitions {
            self.kill_group(p, "source", cause, false);
        }
        let due = Instant::now() + delay;
        for at in self.pending.values_mut() {
            *at = (*at).max(due);
        }
    }

    /// Restarts the partitions whose restart is due: seek to the floor, resume, fresh group.
    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<i32> = self.pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
        for p in due {
            let floor = self.stats.partition(p).floor();
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
            self.start_group(p);
        }
    }

    fn on_failure(&mut self, failure: &Failure) {
        if self.groups.get(&failure.partition).is_some_and(|g| g.epoch == failure.epoch) {
            tracing::warn!(partition = failure.partition, actor = failure.actor, cause = failure.cause, "actor failed");
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
                    _ => match self.stats.pick_run(seed / 3) {
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
                self.kill_group(p, "partition", "chaos", true);
                Ok(format!("partition {p}"))
            }
            KillTarget::Run(run) => {
                let entry = self
                    .stats
                    .find_run(&run)
                    .filter(|e| self.groups.get(&e.partition).is_some_and(|g| g.epoch == e.epoch))
                    .ok_or_else(|| PipelineError::NoSuchTarget(format!("run {run} has no live actor")))?;
                self.kill_group(entry.partition, "run", "chaos", true);
                Ok(format!("run {run} (partition {})", entry.partition))
            }
            KillTarget::Random => Err(PipelineError::NoSuchTarget("nothing to kill".to_owned())),
        }
    }

    /// Starts groups for newly assigned partitions and drains revoked ones.
    async fn sync_assignment(&mut self) {
        let assigned = self.source.assignment();
        let revoked: Vec<i32> = self.groups.keys().filter(|p| !assigned.contains(p)).copied().collect();
        for p in revoked {
            if let Some(group) = self.groups.remove(&p) {
                let drained = drain_group(&group, FlushReason::Revoke).await;
                if let Err(e) = drained {
                    tracing::warn!(partition = p, error = %e, "revoked partition not fully drained");
                }
                group.killed.store(true, Ordering::SeqCst);
                group.addr.do_send(KillNow);
            }
        }
        self.pending.retain(|p, _| assigned.contains(p));
        for p in assigned {
            if !self.groups.contains_key(&p) && !self.pending.contains_key(&p) {
                self.start_group(p);
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), PipelineError> {
        let groups = std::mem::take(&mut self.groups);
        let results =
            futures_util::future::join_all(groups.values().map(|g| drain_group(g, FlushReason::Shutdown))).await;
        for group in groups.values() {
            group.killed.store(true, Ordering::SeqCst);
            group.addr.do_send(KillNow);
        }
        let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() { Ok(()) } else { Err(PipelineError::Flush(errors.join("; "))) }
    }
}

/// Flushes a group's runs, then commits its watermark (after the flush reports queued meanwhile).
async fn drain_group<S: Source + 'static>(group: &Group<S>, reason: FlushReason) -> Result<(), String> {
    group.addr.send(Drain { reason }).await.map_err(|e| e.to_string())??;
    group.addr.send(CommitNow).await.map_err(|e| e.to_string())?.map(|_| ())
}

/// One step of the source loop: poll, then deliver each partition's records to its actor.
async fn poll_and_dispatch<S: Source + 'static>(
    source: Arc<S>,
    routes: Vec<(i32, Addr<PartitionActor<S>>)>,
    stats: Arc<Stats>,
    cancel: Arc<AtomicBool>,
    stage: Arc<AtomicU8>,
    max_records: usize,
    timeout: Duration,
) -> Result<usize, SourceError> {
    let records = source.poll(max_records, timeout).await?;
    let count = records.len();
    if count == 0 {
        return Ok(0);
    }
    crate::metrics::ingest_polled(count);
    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for record in records {
        by_partition.entry(record.partition).or_default().push(record);
    }
    for (p, recs) in &by_partition {
        if let (Some(first), Some(last)) = (recs.first(), recs.last()) {
            stats.note_polled(*p, first.offset, last.offset, recs.len());
        }
    }
    // From here a kill aborts the step; before, it is noticed here (a poll is never cut midway).
    stage.store(DISPATCHING, Ordering::SeqCst);
    if cancel.load(Ordering::SeqCst) {
        return Ok(0);
    }
    let started = Instant::now();
    let sends = by_partition.into_iter().filter_map(|(p, records)| {
        routes.iter().find(|(q, _)| *q == p).map(|(_, addr)| addr.send(Deliver { records }))
    });
    futures_util::future::join_all(sends).await;
    stats.note_backpressure(started.elapsed().as_secs_f64());
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

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
