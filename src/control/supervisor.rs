//! The control supervisor: the source loop of `control-events` and the restart policy of the
//! partition groups (a [`ControlConsumer`] and its [`BlobJanitor`]), on its own actix system.
//!
//! Each step restarts the groups that are due, then polls the source once (unless the janitors'
//! backlog is at `control.max_backlog`: then it waits, so a failing blob store bounds memory
//! instead of growing it) and hands each partition's records to its consumer. A group that fails
//! (a clean that ran out of retries, a dead letter or commit that failed) or that a chaos kill
//! hits is stopped at once, its partition paused, and after a backoff (none for chaos) seeked back
//! to its floor (the committed offset, or the first offset read when nothing was committed) and
//! started afresh. Restarts happen between steps, so no record read before a seek reaches a group
//! started after it. Rebalances (Kafka) stop the groups of revoked partitions without a restart
//! and start groups for assigned ones under their new lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use super::consumer::{CommitNow, ConsumerSetup, ControlConsumer, Deliver, GroupFailure, StopConsumer};
use super::dead_letters::ControlDeadLetters;
use super::janitor::{BlobJanitor, StopJanitor};
use super::stats::ControlStats;
use super::{ControlError, ControlKill, WorkersConfig};
use crate::actors::supervisor::Backoff;
use crate::blobs::BlobStore;
use crate::ingest::{Lease, Record, Source};

/// Requests of the [`ControlHandle`](super::ControlHandle), on their own channel.
pub enum Command {
    /// Kills every group without committing; answers what was killed.
    Kill(ControlKill, oneshot::Sender<Result<String, ControlError>>),
    /// Commits every watermark and stops.
    Shutdown(oneshot::Sender<Result<(), ControlError>>),
}

struct Group<S: Source + 'static> {
    consumer: Addr<ControlConsumer<S>>,
    janitor: Addr<BlobJanitor>,
    killed: Arc<AtomicBool>,
    epoch: u64,
    lease: Lease,
}

/// The supervisor (see the module docs).
pub struct ControlSupervisor<S: Source + 'static> {
    pub(super) source: Arc<S>,
    pub(super) store: Arc<dyn BlobStore>,
    pub(super) dead_letters: Arc<ControlDeadLetters>,
    pub(super) config: WorkersConfig,
    pub(super) stats: Arc<ControlStats>,
    pub(super) commands: Receiver<Command>,
    failures_tx: UnboundedSender<GroupFailure>,
    failures_rx: UnboundedReceiver<GroupFailure>,
    groups: BTreeMap<i32, Group<S>>,
    pending: BTreeMap<i32, Instant>,
    backoff: BTreeMap<i32, Backoff>,
    next_epoch: u64,
}

/// What the loop was asked to stop with: `Some(None)` when every handle was dropped.
type ShutdownReply = Option<Option<oneshot::Sender<Result<(), ControlError>>>>;

impl<S: Source + 'static> ControlSupervisor<S> {
    /// Creates the supervisor; [`run`](Self::run) starts everything.
    pub fn new(
        source: Arc<S>,
        store: Arc<dyn BlobStore>,
        dead_letters: Arc<ControlDeadLetters>,
        config: WorkersConfig,
        stats: Arc<ControlStats>,
        commands: Receiver<Command>,
    ) -> Self {
        let (failures_tx, failures_rx) = unbounded_channel();
        Self {
            source,
            store,
            dead_letters,
            config,
            stats,
            commands,
            failures_tx,
            failures_rx,
            groups: BTreeMap::new(),
            pending: BTreeMap::new(),
            backoff: BTreeMap::new(),
            next_epoch: 1,
        }
    }

    /// Runs until shutdown (or until every handle is dropped).
    pub async fn run(mut self) {
        self.stats.set_running(true);
        self.sync_assignment();
        tracing::info!(partitions = ?self.source.assignment(), topic = %self.config.topic, "control workers started");
        let mut shutdown: ShutdownReply = None;
        while shutdown.is_none() {
            self.restart_due();
            if self.stats.backlog() >= self.config.max_backlog {
                let pause = actix_rt::spawn(tokio::time::sleep(self.config.poll_timeout));
                let _ = self.wait(pause, &mut shutdown).await;
                continue;
            }
            let source = Arc::clone(&self.source);
            let (max, timeout) = (self.config.poll_max_records, self.config.poll_timeout);
            let poll = actix_rt::spawn(async move { source.poll(max, timeout).await });
            let polled = self.wait(poll, &mut shutdown).await;
            let _ = self.source.take_assignment_events();
            self.sync_assignment();
            let records = match polled {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "control source poll failed");
                    self.restart_all("consumer", "source_error", false);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "control source poll panicked");
                    self.restart_all("consumer", "panic", false);
                    continue;
                }
            };
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            for record in records {
                by_partition.entry(record.partition).or_default().push(record);
            }
            for (p, records) in by_partition {
                if let Some(first) = records.first() {
                    self.stats.note_polled(p, first.offset, records.len());
                }
                // A partition without a group waits for its restart and replays from its floor.
                if let Some(group) = self.groups.get(&p) {
                    let send = actix_rt::spawn(group.consumer.send(Deliver { records }));
                    let _ = self.wait(send, &mut shutdown).await;
                }
            }
        }
        let result = self.shutdown().await;
        self.stats.set_running(false);
        tracing::info!("control workers stopped");
        if let Some(Some(reply)) = shutdown {
            let _ = reply.send(result);
        }
    }

    /// Waits for `step` while serving commands and failure reports.
    async fn wait<T>(
        &mut self,
        mut step: tokio::task::JoinHandle<T>,
        shutdown: &mut ShutdownReply,
    ) -> Result<T, tokio::task::JoinError> {
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv(), if shutdown.is_none() => match cmd {
                    None => *shutdown = Some(None),
                    Some(Command::Shutdown(reply)) => *shutdown = Some(Some(reply)),
                    Some(Command::Kill(target, reply)) => {
                        let _ = reply.send(self.kill(target));
                    }
                },
                Some(failure) = self.failures_rx.recv() => self.on_failure(&failure),
                joined = &mut step => return joined,
            }
        }
    }

    fn start_group(&mut self, lease: Lease) {
        let partition = lease.partition;
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let killed = Arc::new(AtomicBool::new(false));
        let janitor = BlobJanitor::new(Arc::clone(&self.store), self.config.janitor, Arc::clone(&self.stats)).start();
        let consumer = ControlConsumer::new(ConsumerSetup {
            partition,
            epoch,
            lease,
            topic: self.config.topic.clone(),
            source: Arc::clone(&self.source),
            janitor: janitor.clone(),
            dead_letters: Arc::clone(&self.dead_letters),
            failures: self.failures_tx.clone(),
            killed: Arc::clone(&killed),
            stats: Arc::clone(&self.stats),
        })
        .start();
        self.groups.insert(partition, Group { consumer, janitor, killed, epoch, lease });
        tracing::debug!(partition, epoch, "control group started");
    }

    fn stop_group(group: &Group<S>) {
        group.killed.store(true, Ordering::SeqCst);
        group.consumer.do_send(StopConsumer);
        group.janitor.do_send(StopJanitor);
    }

    /// Stops a group without committing and schedules its restart after `delay`.
    fn kill_group(&mut self, partition: i32, delay: Duration) {
        let Some(group) = self.groups.remove(&partition) else { return };
        Self::stop_group(&group);
        if let Err(e) = self.source.pause(partition) {
            tracing::warn!(partition, error = %e, "cannot pause control partition");
        }
        tracing::info!(
            partition,
            epoch = group.epoch,
            delay_ms = delay.as_millis() as u64,
            "control group stopped, restart scheduled"
        );
        self.pending.insert(partition, Instant::now() + delay);
    }

    fn restart_all(&mut self, actor: &'static str, cause: &'static str, chaos: bool) {
        self.stats.note_restart(actor, cause);
        let partitions: Vec<i32> = self.groups.keys().copied().collect();
        for p in partitions {
            let delay = if chaos { Duration::ZERO } else { self.next_backoff(p) };
            self.kill_group(p, delay);
        }
    }

    fn next_backoff(&mut self, partition: i32) -> Duration {
        let (initial, max) = (self.config.restart_backoff_initial, self.config.restart_backoff_max);
        self.backoff.entry(partition).or_insert_with(|| Backoff::new(initial, max)).next(Instant::now())
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<i32> = self.pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
        for p in due {
            self.pending.remove(&p);
            let Some(lease) = self.source.lease(p) else { continue };
            if let Some(offset) = self.stats.floor(p)
                && let Err(e) = self.source.seek(p, offset)
            {
                tracing::warn!(partition = p, offset, error = %e, "cannot seek control partition, retrying later");
                self.pending.insert(p, now + self.config.restart_backoff_max);
                continue;
            }
            if let Err(e) = self.source.resume(p) {
                tracing::warn!(partition = p, error = %e, "cannot resume control partition");
            }
            self.start_group(lease);
        }
    }

    fn on_failure(&mut self, failure: &GroupFailure) {
        if self.groups.get(&failure.partition).is_some_and(|g| g.epoch == failure.epoch) {
            tracing::warn!(
                partition = failure.partition,
                actor = failure.actor,
                cause = failure.cause,
                "control actor failed"
            );
            self.stats.note_restart(failure.actor, failure.cause);
            let delay = self.next_backoff(failure.partition);
            self.kill_group(failure.partition, delay);
        }
    }

    fn kill(&mut self, target: ControlKill) -> Result<String, ControlError> {
        if self.groups.is_empty() {
            return Err(ControlError::NoSuchTarget("no control group is live".to_owned()));
        }
        let actor = match target {
            ControlKill::Consumer => "consumer",
            ControlKill::Janitor => "janitor",
        };
        self.restart_all(actor, "chaos", true);
        Ok(format!("control {actor}"))
    }

    /// Makes the groups match the source's assignment and leases.
    fn sync_assignment(&mut self) {
        let assigned = self.source.assignment();
        let known: Vec<i32> = self.groups.keys().chain(self.pending.keys()).copied().collect();
        for p in known {
            let current = self.source.lease(p);
            let stale = !assigned.contains(&p) || self.groups.get(&p).is_some_and(|g| Some(g.lease) != current);
            if stale {
                self.pending.remove(&p);
                if let Some(group) = self.groups.remove(&p) {
                    Self::stop_group(&group);
                }
                self.stats.forget(p);
                tracing::info!(partition = p, "control partition revoked");
            }
        }
        for p in assigned {
            if !self.groups.contains_key(&p)
                && !self.pending.contains_key(&p)
                && let Some(lease) = self.source.lease(p)
            {
                self.start_group(lease);
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), ControlError> {
        let groups = std::mem::take(&mut self.groups);
        for group in groups.values() {
            // Work in flight is dropped; it is replayed at the next start (cleans are idempotent).
            if let Err(e) = group.consumer.send(CommitNow).await {
                tracing::warn!(error = %e, "control consumer gone before its last commit");
            }
            Self::stop_group(group);
        }
        Ok(())
    }
}
