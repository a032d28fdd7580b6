//! The run actor: one per active run of a partition. It owns the run's [`RunBatch`], flushes sealed
//! batches through the [`Flusher`] (the I/O lives in [`super::flush`]), and reports flushed offsets
//! to its partition actor.
//!
//! - Flushes happen on the batch's own decisions (bytes, count), on an age timer whose message
//!   carries a generation id (a stale deadline does nothing), and on [`FlushNow`] (shutdown,
//!   revoke). One flush per run is in flight at a time (a run's transactions commit in source
//!   order, which its checkpoint relies on), and it does not block the mailbox: the next batch
//!   fills while the previous one commits, so decoding and storage work overlap. When a sealed
//!   batch is waiting behind the flight, a push waits for the flight to land (`ctx.wait`): a slow
//!   store stops the partition actor, which stops the source loop (back-pressure), with at most
//!   two batches of the run in memory.
//! - A flush that fails (storage errors after the retry loop, a dead letter not forwarded) is
//!   reported to the supervisor, and the actor stops: the supervisor restarts the partition group,
//!   which replays from the committed offset; checkpoints skip whatever was applied.
//! - With nothing buffered and no record for the idle timeout, the actor asks its partition actor
//!   to stop it ([`Idle`]); the partition actor agrees only if no push is in flight. A partition
//!   at its cap of run actors evicts one with [`Surrender`] (it hands over its batches, flushed
//!   with other evicted runs' in [`flush_shared`](super::flush::flush_shared)) and then [`Stop`].
//! - A chaos kill sets the group's or the actor's flag: the next event stops the actor without
//!   flushing, dropping its batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::flush::{FlushFailure, Flusher};
use super::models::{ActorExit, ActorKind, Failure, FailureCause, Flushed, RunActorConfig};
use crate::clock::Clock;
use crate::ingest::{Batch, Entry, FlushReason, RunBatch};

/// Mailbox capacity of a run actor, in pushes (each carries one poll's records of the run).
pub const RUN_MAILBOX: usize = 16;

/// Records of this run from one delivery, in source order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push {
    /// Decoded records of this run only; the partition actor groups a delivery by run.
    pub entries: Vec<Entry>,
}

/// Flushes everything buffered for `reason` (shutdown, revoke); answers the offsets flushed.
#[derive(Message)]
#[rtype(result = "Result<Vec<i64>, ActorExit>")]
pub struct FlushNow {
    /// The reason the flush is counted under (`shutdown` or `revoke`).
    pub reason: FlushReason,
}

/// Hands over what the actor buffered instead of flushing it, so its partition actor can flush it
/// in a transaction shared with other evicted runs: the flight in flight lands first (its offsets
/// are answered), then the open batch is sealed (reason `evict`) and every sealed batch is
/// answered. The actor holds nothing afterwards; its partition actor stops it.
#[derive(Message)]
#[rtype(result = "Result<Surrendered, ActorExit>")]
pub struct Surrender;

/// The answer to [`Surrender`].
pub struct Surrendered {
    /// Offsets of the flight that landed meanwhile.
    pub flushed: Vec<i64>,
    /// What is not flushed yet, oldest first.
    pub batches: Vec<Batch>,
}

/// Stops an idle actor (sent by the partition actor after it removed the actor from its map).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The actor has nothing buffered and saw no record for the idle timeout.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Idle {
    /// The run whose actor is idle: the partition actor's key for it.
    pub run: String,
    /// The actor's incarnation: a report of an earlier actor of the run (idle-stopped or evicted,
    /// its report still queued) must not stop a later one.
    pub incarnation: u64,
    /// Pushes the actor received so far.
    pub pushes: u64,
}

/// One run's actor (see the module docs).
pub struct RunActor {
    run: String,
    incarnation: u64,
    partition: i32,
    epoch: u64,
    batch: RunBatch,
    flusher: Flusher,
    flushed_to: Recipient<Flushed>,
    idle_to: Recipient<Idle>,
    failures: UnboundedSender<Failure>,
    group_killed: Arc<AtomicBool>,
    idle_timeout: Duration,
    clock: Clock,
    pushes: u64,
    last_activity: Instant,
    /// Generation of the armed age timer; a timer of another generation is stale.
    generation: u64,
    armed: Option<Instant>,
    /// The flush in flight, if any.
    flight: Option<Flight>,
    /// Id of the next flight.
    flights: u64,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The outcome of a flush, shared by whoever waits for it.
type FlushOutcome = Arc<Result<Vec<i64>, FlushFailure>>;

/// A flush in flight. Its future is shared: the actor's completion item and a push or
/// [`FlushNow`] waiting for it all poll the same flush (so it progresses even while `ctx.wait`
/// holds the actor); whoever takes `RunActor::flight` first handles the outcome.
struct Flight {
    id: u64,
    fut: futures_util::future::Shared<BoxFuture<FlushOutcome>>,
}

impl RunActor {
    /// Creates the actor of `run` in partition group `epoch`; `incarnation` tells it from earlier
    /// actors of the run in the group.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run: String,
        incarnation: u64,
        partition: i32,
        epoch: u64,
        config: &RunActorConfig,
        flusher: Flusher,
        flushed_to: Recipient<Flushed>,
        idle_to: Recipient<Idle>,
        failures: UnboundedSender<Failure>,
        group_killed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            run,
            incarnation,
            partition,
            epoch,
            batch: RunBatch::new(config.budget),
            flusher,
            flushed_to,
            idle_to,
            failures,
            group_killed,
            idle_timeout: config.idle_timeout,
            clock: config.clock,
            pushes: 0,
            last_activity: config.clock.now(),
            generation: 0,
            armed: None,
            flight: None,
            flights: 0,
        }
    }

    /// Stops the actor when its group was killed; returns whether it did.
    fn stop_if_killed(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.group_killed.load(Ordering::Acquire) {
            ctx.stop();
            return true;
        }
        false
    }

    /// Arms the age timer at the open batch's deadline when it changed.
    fn arm_age(&mut self, ctx: &mut Context<Self>) {
        let deadline = self.batch.deadline();
        if deadline == self.armed {
            return;
        }
        self.armed = deadline;
        self.generation += 1;
        if let Some(deadline) = deadline {
            let generation = self.generation;
            ctx.run_later(deadline.saturating_duration_since(self.clock.now()), move |act, ctx| {
                act.on_age(generation, ctx);
            });
        }
    }

    fn on_age(&mut self, generation: u64, ctx: &mut Context<Self>) {
        if self.stop_if_killed(ctx) || generation != self.generation {
            return;
        }
        self.armed = None;
        self.batch.tick(self.clock.now());
        self.flush_sealed(ctx);
        self.arm_age(ctx);
    }

    fn on_idle_check(&mut self, ctx: &mut Context<Self>) {
        if self.stop_if_killed(ctx) {
            return;
        }
        if self.batch.pending_len() == 0
            && self.flight.is_none()
            && self.clock.since(self.last_activity) >= self.idle_timeout
        {
            self.idle_to.do_send(Idle { run: self.run.clone(), incarnation: self.incarnation, pushes: self.pushes });
        }
    }

    /// Starts a flight with every sealed batch, unless one is in flight (the batches then wait
    /// for it to land).
    fn flush_sealed(&mut self, ctx: &mut Context<Self>) {
        if self.flight.is_some() || !self.batch.has_sealed() {
            return;
        }
        let batches = std::iter::from_fn(|| self.batch.take()).collect::<Vec<_>>();
        let flush = self.flusher.clone().flush(self.run.clone(), batches, Some(self.flushed_to.clone()));
        let fut = futures_util::FutureExt::shared(Box::pin(async move { Arc::new(flush.await) }) as BoxFuture<_>);
        self.flights += 1;
        let id = self.flights;
        self.flight = Some(Flight { id, fut: fut.clone() });
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| act.land(id, &outcome, ctx)));
    }

    /// Handles the outcome of flight `id` unless someone else did; then starts the next flight.
    fn land(&mut self, id: u64, outcome: &FlushOutcome, ctx: &mut Context<Self>) {
        if self.flight.as_ref().is_none_or(|f| f.id != id) {
            return;
        }
        self.flight = None;
        if self.after_flush(outcome, ctx).is_some() {
            self.flush_sealed(ctx);
        }
    }

    /// Reports a flush's outcome; on failure reports to the supervisor and stops.
    fn after_flush(&mut self, result: &Result<Vec<i64>, FlushFailure>, ctx: &mut Context<Self>) -> Option<()> {
        match result {
            Ok(offsets) => {
                if !offsets.is_empty() {
                    self.flushed_to.do_send(Flushed { offsets: offsets.clone() });
                }
                Some(())
            }
            Err(failure) => {
                self.fail(failure, ctx);
                None
            }
        }
    }

    /// Reports a failed flush: what it committed, then the failure to the supervisor; stops.
    fn fail(&mut self, failure: &FlushFailure, ctx: &mut Context<Self>) {
        if !failure.flushed.is_empty() {
            self.flushed_to.do_send(Flushed { offsets: failure.flushed.clone() });
        }
        tracing::warn!(run = %self.run, partition = self.partition, cause = %failure.cause, error = %failure.error, "run flush failed");
        let _ = self.failures.send(Failure {
            partition: self.partition,
            epoch: self.epoch,
            actor: ActorKind::Run,
            cause: failure.cause,
        });
        ctx.stop();
    }
}

/// The cause of a failed flush's outcome (a successful one never gets here).
fn failure_cause(outcome: &FlushOutcome) -> FailureCause {
    outcome.as_ref().as_ref().err().map_or(FailureCause::Storage, |f| f.cause)
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RUN_MAILBOX);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        ctx.run_interval(every, |act, ctx| act.on_idle_check(ctx));
    }
}

impl Handler<Push> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) -> Self::Result {
        let done = || AtomicResponse::new(Box::pin(actix::fut::ready(())));
        if self.stop_if_killed(ctx) {
            return done();
        }
        self.pushes += 1;
        let now = self.clock.now();
        self.last_activity = now;
        for entry in msg.entries {
            self.batch.push(entry, now);
        }
        self.flush_sealed(ctx);
        self.arm_age(ctx);
        // A sealed batch waits behind the flight: hold the mailbox until the flight lands.
        match &self.flight {
            Some(flight) if self.batch.has_sealed() => {
                let id = flight.id;
                AtomicResponse::new(Box::pin(
                    flight.fut.clone().into_actor(self).map(move |outcome, act, ctx| act.land(id, &outcome, ctx)),
                ))
            }
            _ => done(),
        }
    }
}

impl Handler<FlushNow> for RunActor {
    type Result = AtomicResponse<Self, Result<Vec<i64>, ActorExit>>;

    fn handle(&mut self, msg: FlushNow, ctx: &mut Self::Context) -> Self::Result {
        if self.stop_if_killed(ctx) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorExit::Killed(ActorKind::Run)))));
        }
        self.batch.flush(msg.reason);
        // The flight (if any) lands first, so the run's transactions keep their order.
        let prior = self.flight.take().map(|f| f.fut);
        let batches = std::iter::from_fn(|| self.batch.take()).collect::<Vec<_>>();
        let (flusher, run, early) = (self.flusher.clone(), self.run.clone(), self.flushed_to.clone());
        let fut = async move {
            let mut offsets = Vec::new();
            if let Some(prior) = prior {
                let outcome = prior.await;
                match &*outcome {
                    Ok(done) => offsets.extend_from_slice(done),
                    Err(_) => return (offsets, Some(outcome)),
                }
            }
            match flusher.flush(run, batches, Some(early)).await {
                Ok(done) => {
                    offsets.extend(done);
                    (offsets, None)
                }
                Err(failure) => (offsets, Some(Arc::new(Err(failure)))),
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|(offsets, failed), act, ctx| match failed {
            // The caller marks these offsets itself; no separate report needed.
            None => Ok(offsets),
            Some(outcome) => {
                if !offsets.is_empty() {
                    act.flushed_to.do_send(Flushed { offsets });
                }
                act.after_flush(&outcome, ctx);
                Err(ActorExit::Failed(ActorKind::Run, failure_cause(&outcome)))
            }
        })))
    }
}

impl Handler<Surrender> for RunActor {
    type Result = AtomicResponse<Self, Result<Surrendered, ActorExit>>;

    fn handle(&mut self, _: Surrender, ctx: &mut Self::Context) -> Self::Result {
        if self.stop_if_killed(ctx) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(ActorExit::Killed(ActorKind::Run)))));
        }
        self.batch.flush(FlushReason::Evict);
        // The flight (if any) lands first, so the run's transactions keep their order.
        let prior = self.flight.take().map(|f| f.fut);
        let batches = std::iter::from_fn(|| self.batch.take()).collect::<Vec<_>>();
        let fut = async move {
            let Some(prior) = prior else { return Ok(Vec::new()) };
            let outcome = prior.await;
            match &*outcome {
                Ok(done) => Ok(done.clone()),
                Err(_) => Err(outcome),
            }
        };
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(move |landed, act, ctx| match landed {
            Ok(flushed) => Ok(Surrendered { flushed, batches }),
            Err(outcome) => {
                act.after_flush(&outcome, ctx);
                Err(ActorExit::Failed(ActorKind::Run, failure_cause(&outcome)))
            }
        })))
    }
}

impl Handler<Stop> for RunActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;
    use crate::actors::flush::FLUSH_TRANSACTIONS;
    use crate::actors::testing::{
        self, Probe, ProbeLog, advance, create_run, entry, metric, run_paused, settle, until,
    };
    use crate::ingest::BatchBudget;

    const BUDGET: BatchBudget = BatchBudget { max_bytes: 1 << 20, max_messages: 3, max_age: Duration::from_secs(2) };

    struct Harness {
        actor: Addr<RunActor>,
        log: Arc<parking_lot::Mutex<ProbeLog>>,
        flusher: Flusher,
        _failures: UnboundedReceiver<Failure>,
    }

    /// Starts the run actor of `r1` in partition 0, reporting to a probe.
    async fn start(idle_timeout: Duration) -> Harness {
        let flusher = testing::flusher(FLUSH_TRANSACTIONS).await;
        let (probe, log) = Probe::start();
        let (failures, failures_rx) = unbounded_channel();
        let actor = RunActor::new(
            "r1".to_owned(),
            1,
            0,
            1,
            &testing::run_config(BUDGET, idle_timeout),
            flusher.clone(),
            probe.clone().recipient(),
            probe.recipient(),
            failures,
            Arc::new(AtomicBool::new(false)),
        )
        .start();
        Harness { actor, log, flusher, _failures: failures_rx }
    }

    fn push(offsets: std::ops::Range<i64>) -> Push {
        let entries = offsets
            .map(|o| if o == 0 { entry(0, o, &create_run("r1")) } else { entry(0, o, &metric("r1", o)) })
            .collect();
        Push { entries }
    }

    #[test]
    fn a_run_actor_flushes_a_batch_that_reaches_its_message_budget_without_waiting_for_its_age() {
        run_paused(async {
            let h = start(Duration::from_secs(30)).await;
            h.actor.send(push(0..3)).await.expect("pushed");
            until("the flush is reported", || h.log.lock().flushed == [0, 1, 2]).await;
            let counters = h.flusher.stats.snapshot();
            assert_eq!((counters.flushes["count"], counters.flushes["age"], counters.applied), (1, 0, 3));
        });
    }

    #[test]
    fn a_run_actor_flushes_a_partial_batch_when_its_age_budget_passes_and_not_before() {
        run_paused(async {
            let h = start(Duration::from_secs(30)).await;
            h.actor.send(push(0..2)).await.expect("pushed");
            settle().await;
            advance(BUDGET.max_age - Duration::from_millis(1)).await;
            assert!(h.log.lock().flushed.is_empty(), "nothing is flushed before the age budget");
            advance(Duration::from_millis(1)).await;
            until("the age flush is reported", || h.log.lock().flushed == [0, 1]).await;
            let counters = h.flusher.stats.snapshot();
            assert_eq!((counters.flushes["age"], counters.flushes["count"]), (1, 0));
            assert_eq!(testing::checkpoint(&h.flusher, "r1", 0).await, Some(1));
        });
    }

    #[test]
    fn a_run_actor_with_nothing_buffered_asks_to_stop_once_idle_for_its_timeout() {
        run_paused(async {
            let idle = Duration::from_secs(10);
            let h = start(idle).await;
            let pushed_at = tokio::time::Instant::now();
            h.actor.send(push(0..1)).await.expect("pushed");
            until("the age flush is reported", || h.log.lock().flushed == [0]).await;
            let almost =
                (pushed_at + idle - Duration::from_secs(1)).saturating_duration_since(tokio::time::Instant::now());
            advance(almost).await;
            assert!(h.log.lock().idle.is_empty(), "not idle before the timeout");
            until("the idle report", || !h.log.lock().idle.is_empty()).await;
            assert_eq!(
                h.log.lock().idle,
                [("r1".to_owned(), 1, 1)],
                "one report, of this incarnation, after its one push"
            );
        });
    }
}
