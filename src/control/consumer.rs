//! The `ControlConsumer` actor: one per assigned partition of `control-events`. It decodes each
//! record, dead-letters the malformed ones, routes `run_deleted` to the group's
//! [`BlobJanitor`](super::janitor::BlobJanitor) and counts the others, and commits the
//! partition's low watermark: the offset below which every record is done.
//!
//! A record is done when its handler's work is: a run deletion once the janitor removed every
//! object, a dead letter once it is durable, any other event once decoded (nothing else to do,
//! §1.5). So a committed offset never passes an event whose objects may still be there, whatever
//! order the work completes in, and a killed or failed group replays from it: exactly-once in
//! effect, since cleaning a run again is idempotent. Commits present the group's lease, so a
//! commit in flight across a rebalance is refused as stale and ignored.
//!
//! Failures (a clean or a dead letter that failed after its retries, a commit error) are reported
//! to the supervisor, which stops the group without committing further and restarts it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::dead_letters::ControlDeadLetters;
use super::event::{self, ControlEvent};
use super::janitor::{BlobJanitor, Clean, JanitorError};
use super::stats::ControlStats;
use crate::ingest::dlq::Rejected;
use crate::ingest::{Lease, Record, Source};

/// A failure reported by a group's actor.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    /// The group's partition.
    pub partition: i32,
    /// The group's epoch; reports of an older group are ignored.
    pub epoch: u64,
    /// `consumer` or `janitor`.
    pub actor: &'static str,
    /// Bounded cause label: `blob_storage`, `dead_letter`, `commit`, `mailbox`.
    pub cause: &'static str,
}

/// Records of the partition, in offset order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub records: Vec<Record>,
}

/// Commits the watermark now and answers it (shutdown).
#[derive(Debug, Message)]
#[rtype(result = "Option<i64>")]
pub struct CommitNow;

/// Stops the consumer at once, dropping its work in flight (chaos, supervision, revocation).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopConsumer;

/// What a consumer needs.
pub struct ConsumerSetup<S: Source + 'static> {
    pub partition: i32,
    pub epoch: u64,
    pub lease: Lease,
    pub topic: String,
    pub source: Arc<S>,
    pub janitor: Addr<BlobJanitor>,
    pub dead_letters: Arc<ControlDeadLetters>,
    pub failures: UnboundedSender<GroupFailure>,
    pub killed: Arc<AtomicBool>,
    pub stats: Arc<ControlStats>,
}

/// The consumer (see the module docs).
pub struct ControlConsumer<S: Source + 'static> {
    setup: ConsumerSetup<S>,
    /// Offsets received whose work is not done.
    pending: BTreeSet<i64>,
    /// One past the last offset received.
    next: Option<i64>,
    /// The last committed watermark.
    committed: Option<i64>,
    committing: bool,
    /// Run deletions in the janitor's hands (the backlog this consumer added).
    cleaning: u64,
}

impl<S: Source + 'static> ControlConsumer<S> {
    /// A consumer of one partition group.
    pub fn new(setup: ConsumerSetup<S>) -> Self {
        Self { setup, pending: BTreeSet::new(), next: None, committed: None, committing: false, cleaning: 0 }
    }

    fn watermark(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    fn fail(&self, actor: &'static str, cause: &'static str) {
        if self.setup.killed.load(Ordering::SeqCst) {
            return;
        }
        crate::metrics::control_error(cause);
        let _ = self.setup.failures.send(GroupFailure {
            partition: self.setup.partition,
            epoch: self.setup.epoch,
            actor,
            cause,
        });
    }

    fn done(&mut self, offset: i64, ctx: &mut Context<Self>) {
        self.pending.remove(&offset);
        self.maybe_commit(ctx);
    }

    /// Commits the watermark if it moved and no commit is in flight.
    fn maybe_commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.setup.killed.load(Ordering::SeqCst) {
            return;
        }
        let Some(mark) = self.watermark() else { return };
        if self.committed.is_some_and(|c| c >= mark) {
            return;
        }
        self.committing = true;
        let (source, lease) = (Arc::clone(&self.setup.source), self.setup.lease);
        let commit = async move { source.commit_leased(lease, mark).await };
        ctx.spawn(commit.into_actor(self).map(move |result, act, ctx| {
            act.committing = false;
            match result {
                Ok(()) => {
                    act.committed = Some(mark);
                    act.setup.stats.note_committed(act.setup.partition, mark);
                    act.maybe_commit(ctx);
                }
                Err(e) if e.is_stale() => {
                    tracing::info!(partition = act.setup.partition, "control commit refused: partition revoked")
                }
                Err(e) => {
                    tracing::warn!(partition = act.setup.partition, error = %e, "control commit failed");
                    act.fail("consumer", "commit");
                }
            }
        }));
    }

    fn route(&mut self, record: Record, ctx: &mut Context<Self>) {
        let offset = record.offset;
        match event::decode(&record.value) {
            Err(e) => {
                self.pending.insert(offset);
                let letters = Arc::clone(&self.setup.dead_letters);
                let topic = self.setup.topic.clone();
                let reason = e.reason();
                let send = async move {
                    let rejected = Rejected {
                        topic: &topic,
                        partition: record.partition,
                        offset,
                        key: record.key.as_deref(),
                        value: &record.value,
                        reason,
                        detail: e.to_string(),
                        message_type: None,
                    };
                    letters.send(&rejected).await
                };
                ctx.spawn(send.into_actor(self).map(move |result, act, ctx| match result {
                    Ok(()) => {
                        act.setup.stats.note_dead_letter(reason);
                        act.done(offset, ctx);
                    }
                    Err(e) => {
                        tracing::warn!(offset, error = %e, "control dead letter failed");
                        act.fail("consumer", "dead_letter");
                    }
                }));
            }
            Ok(ControlEvent::RunDeleted { run_id, blob_keys }) => {
                self.pending.insert(offset);
                self.setup.stats.note_backlog(true);
                self.cleaning += 1;
                let clean = self.setup.janitor.send(Clean { run_id, blob_keys });
                ctx.spawn(clean.into_actor(self).map(move |result, act, ctx| {
                    act.setup.stats.note_backlog(false);
                    act.cleaning -= 1;
                    match result {
                        Ok(Ok(_)) => {
                            act.setup.stats.note_processed("run_deleted");
                            act.done(offset, ctx);
                        }
                        Ok(Err(JanitorError::Stopped)) | Err(_) => act.fail("janitor", "mailbox"),
                        Ok(Err(e)) => {
                            tracing::warn!(offset, error = %e, "run cleanup failed; the event is replayed after a restart");
                            act.fail("janitor", "blob_storage");
                        }
                    }
                }));
            }
            Ok(other) => {
                // Nothing to do beyond what the REST write did (§2.3–2.5): logged and counted.
                tracing::info!(event = ?other, offset, "control event needs no work");
                self.setup.stats.note_processed(other.label());
            }
        }
    }
}

impl<S: Source + 'static> Actor for ControlConsumer<S> {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        // Work dropped with the actor is replayed from the committed offset: its backlog is gone.
        for _ in 0..self.cleaning {
            self.setup.stats.note_backlog(false);
        }
    }
}

impl<S: Source + 'static> Handler<Deliver> for ControlConsumer<S> {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        if self.setup.killed.load(Ordering::SeqCst) {
            return;
        }
        for record in msg.records {
            self.next = Some(record.offset + 1);
            self.route(record, ctx);
        }
        self.maybe_commit(ctx);
    }
}

impl<S: Source + 'static> Handler<CommitNow> for ControlConsumer<S> {
    type Result = ResponseActFuture<Self, Option<i64>>;

    fn handle(&mut self, _: CommitNow, _: &mut Context<Self>) -> Self::Result {
        let mark = self.watermark().filter(|m| self.committed.is_none_or(|c| c < *m));
        let (source, lease) = (Arc::clone(&self.setup.source), self.setup.lease);
        Box::pin(
            async move {
                match mark {
                    Some(mark) => source.commit_leased(lease, mark).await.map(|()| Some(mark)),
                    None => Ok(None),
                }
            }
            .into_actor(self)
            .map(|result, act, _| match result {
                Ok(Some(mark)) => {
                    act.committed = Some(mark);
                    act.setup.stats.note_committed(act.setup.partition, mark);
                    Some(mark)
                }
                Ok(None) => act.committed,
                Err(e) => {
                    tracing::warn!(partition = act.setup.partition, error = %e, "last control commit failed");
                    act.committed
                }
            }),
        )
    }
}

impl<S: Source + 'static> Handler<StopConsumer> for ControlConsumer<S> {
    type Result = ();

    fn handle(&mut self, _: StopConsumer, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
