//! The flush I/O of the ingest actors: applying a run's sealed batches in budgeted transactions
//! (each with the run's checkpoint), splitting a batch refused as too large, packing evicted runs
//! into shared transactions, and forwarding the dead letters a flush staged. No actor lives here:
//! the run actor and the partition actor call [`Flusher`], and every function is an ordinary
//! future, so it can be driven without an actor system.
//!
//! - A batch refused with `transaction_too_large` is split in halves, each applied in order; a
//!   single entry that is still too large is dead-lettered. Every split strictly shrinks the work,
//!   so this never loops.
//! - Records failing at apply are dead-lettered in the keyspace with the run's transaction. With
//!   the Kafka dead-letter sink they are forwarded to the topic (and removed from the keyspace)
//!   before the flush reports its offsets, so the partition's committed offset passes a dead
//!   letter only once the broker acknowledged it.
//! - Other storage errors, once the retry loop gave up, come back as a [`FlushFailure`]: the actor
//!   reports it to the supervisor, which restarts the partition group from the committed offset;
//!   checkpoints skip whatever was applied.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::models::{FailureCause, Flushed};
use super::stats::{FlushNote, Stats};
use crate::clock::Clock;
use crate::ingest::apply::{DeadLetter, RecordTime};
use crate::ingest::dlq::{DeadLetterError, DeadLetterSink, EmbeddedDeadLetters};
use crate::ingest::{Applier, ApplyError, Batch, Entry, FlushReason, position_uuid};
use crate::storage::kv::{Database, KvError, RetryOptions};

/// Flush transactions open at once in a pipeline. A transaction's 5 s clock starts when it opens,
/// so thousands of runs flushing together (age timers of many small runs, evictions, a drain)
/// would queue their open transactions for the same cores until they fail `transaction_too_old`;
/// the rest wait for a slot before opening theirs.
pub const FLUSH_TRANSACTIONS: usize = 64;

/// What a flush needs from the outside world, shared by every run actor of a pipeline.
#[derive(Clone)]
pub struct Flusher {
    /// The store every flush transaction runs on.
    pub db: Database,
    /// Applies a run's entries in a transaction, with its checkpoint (and writes dead letters).
    pub applier: Applier,
    /// Retry options of each flush transaction.
    pub retry: RetryOptions,
    /// Where flushes count what they committed (shared by the whole pipeline).
    pub stats: Arc<Stats>,
    /// Where dead letters go.
    pub dead_letters: Arc<DeadLetters>,
    /// A multi-threaded runtime that runs the flushes, so encoding and applying use every core
    /// instead of the actor system's one thread; `None` runs them on the actor's thread.
    pub offload: Option<tokio::runtime::Handle>,
    /// Slots of open flush transactions ([`FLUSH_TRANSACTIONS`]), shared by every run actor.
    pub transactions: Arc<tokio::sync::Semaphore>,
    /// What flushes read time from (durations, the worker timestamps they write).
    pub clock: Clock,
}

impl Flusher {
    /// The slots of open flush transactions of a new pipeline.
    pub fn transaction_slots() -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(FLUSH_TRANSACTIONS))
    }

    /// The multi-threaded runtime of the calling context, if it is one: where flushes go.
    pub fn offload_runtime() -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
    }

    /// Runs [`flush_batches`] on the offload runtime when there is one, else in place. A flush
    /// whose actor is killed meanwhile still finishes (as a commit in flight at a crash would);
    /// the run's checkpoint makes the restarted actor skip whatever it committed.
    pub async fn flush(
        self,
        run: String,
        batches: Vec<Batch>,
        early: Option<Recipient<Flushed>>,
    ) -> Result<Vec<i64>, FlushFailure> {
        let Some(rt) = self.offload.clone() else { return flush_batches(self, run, batches, early).await };
        match rt.spawn(flush_batches(self, run, batches, early)).await {
            Ok(result) => result,
            Err(e) => Err(FlushFailure {
                flushed: Vec::new(),
                cause: FailureCause::Panic,
                error: FlushError::Task(e.to_string()),
            }),
        }
    }

    /// Runs [`flush_shared`] on the offload runtime when there is one, else in place.
    pub async fn flush_shared(self, runs: Vec<(String, Batch)>) -> Result<Vec<i64>, FlushFailure> {
        let Some(rt) = self.offload.clone() else { return flush_shared(self, runs).await };
        match rt.spawn(flush_shared(self, runs)).await {
            Ok(result) => result,
            Err(e) => Err(FlushFailure {
                flushed: Vec::new(),
                cause: FailureCause::Panic,
                error: FlushError::Task(e.to_string()),
            }),
        }
    }
}

/// Where a pipeline's dead letters go.
pub struct DeadLetters {
    /// The sink of records that do not decode: the Kafka topic or the keyspace.
    pub sink: DeadLetterSink,
    /// The keyspace, where records failing at apply are written in their run's transaction; with
    /// the Kafka sink only until they are forwarded.
    pub stage: EmbeddedDeadLetters,
    /// The topic the source reads, named as the origin of each dead letter.
    pub topic: String,
}

impl DeadLetters {
    /// Dead letters in the keyspace of `db` only (the embedded sink).
    pub fn embedded(db: Database, applier: Applier, retry: RetryOptions, topic: String) -> Self {
        let stage = EmbeddedDeadLetters { db: db.clone(), applier: applier.clone(), retry };
        Self { sink: DeadLetterSink::embedded(db, applier, retry), stage, topic }
    }

    /// Tells whether staged dead letters are forwarded (the sink is Kafka).
    pub fn forwards(&self) -> bool {
        matches!(self.sink, DeadLetterSink::Kafka(_))
    }

    /// Forwards the letters staged at `positions` when the sink is Kafka; nothing to do otherwise.
    async fn forward(&self, positions: &[(i32, i64)]) -> Result<(), DeadLetterError> {
        if let DeadLetterSink::Kafka(kafka) = &self.sink {
            kafka.forward_stored(&self.stage, &self.topic, positions).await?;
        }
        Ok(())
    }

    /// Forwards every staged letter when the sink is Kafka; returns how many.
    pub async fn forward_all(&self) -> Result<usize, DeadLetterError> {
        match &self.sink {
            DeadLetterSink::Kafka(kafka) => kafka.forward_all_stored(&self.stage, &self.topic).await,
            DeadLetterSink::Embedded(_) => Ok(0),
        }
    }

    /// Forwards staged letters every `interval` until `shutdown` completes (Kafka sink only).
    pub async fn run_forwarder(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        if let DeadLetterSink::Kafka(kafka) = &self.sink {
            kafka.run_forwarder(&self.stage, &self.topic, interval, shutdown).await;
        }
    }
}

/// Why a flush failed, with what it committed before failing.
pub struct FlushFailure {
    /// Offsets committed before the failure.
    pub flushed: Vec<i64>,
    /// Why, as the supervisor counts it.
    pub cause: FailureCause,
    /// What went wrong, for the log.
    pub error: FlushError,
}

/// The error of a failed flush.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// A transaction failed after its retries (or was refused as corrupt).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A dead letter could not be forwarded to the dead-letter topic.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The flush task panicked or was cancelled.
    #[error("flush task failed: {0}")]
    Task(String),
}

/// Applies `batches` of `run` in order, one transaction each (split when too large), then
/// forwards the dead letters they staged when the sink is Kafka. Returns the offsets committed
/// (applied, replay-skipped or dead-lettered). Offsets below the first staged letter are reported
/// to `early` before the forward, so a slow dead-letter sink holds back only the commit past it.
pub async fn flush_batches(
    flusher: Flusher,
    run: String,
    batches: Vec<Batch>,
    early: Option<Recipient<Flushed>>,
) -> Result<Vec<i64>, FlushFailure> {
    let mut staged = Vec::new();
    let flushed = apply_batches(&flusher, &run, batches, &mut staged).await?;
    if staged.is_empty() || !flusher.dead_letters.forwards() {
        return Ok(flushed);
    }
    let first = staged.iter().map(|(_, o)| *o).min().unwrap_or(i64::MAX);
    let before: Vec<i64> = flushed.iter().copied().filter(|o| *o < first).collect();
    if let Some(to) = early.filter(|_| !before.is_empty()) {
        to.do_send(Flushed { offsets: before.clone() });
    }
    if let Err(error) = flusher.dead_letters.forward(&staged).await {
        // The data is committed; the letters stay staged for the forwarder's next pass. Offsets
        // from the first unforwarded letter on are not reported, so they are not committed.
        return Err(FlushFailure { flushed: before, cause: FailureCause::DeadLetter, error: error.into() });
    }
    Ok(flushed)
}

/// Applies `batches`; adds the positions of the dead letters written to `staged`.
async fn apply_batches(
    flusher: &Flusher,
    run: &str,
    batches: Vec<Batch>,
    staged: &mut Vec<(i32, i64)>,
) -> Result<Vec<i64>, FlushFailure> {
    let mut flushed = Vec::new();
    for batch in batches {
        let reason = batch.reason;
        let mut estimated = batch.estimated_bytes;
        // A stack of pieces, first piece on top, so halves are applied in source order.
        let mut pieces = vec![batch.entries];
        let mut first = true;
        while let Some(mut entries) = pieces.pop() {
            if !first {
                estimated = entries.iter().map(|e| crate::ingest::estimate::estimated_bytes(&e.message)).sum();
            }
            first = false;
            let started = flusher.clock.now();
            match apply_once(flusher, run, &entries).await {
                Ok((outcome, txn_bytes, retries)) => {
                    let seconds = flusher.clock.since(started).as_secs_f64();
                    flusher.stats.note_flush(FlushNote {
                        reason,
                        estimated_bytes: estimated,
                        txn_bytes,
                        seconds,
                        retries,
                    });
                    note_outcome(flusher, &outcome, &entries, staged);
                    flushed.extend(entries.iter().map(|e| e.offset));
                }
                Err(ApplyError::Kv(KvError::TransactionTooLarge { size, limit })) => {
                    crate::metrics::ingest_error("txn_too_large_split");
                    if entries.len() > 1 {
                        tracing::info!(%run, entries = entries.len(), size, limit, "transaction too large, splitting the batch");
                        let second = entries.split_off(entries.len() / 2);
                        pieces.push(second);
                        pieces.push(entries);
                    } else if let Some(entry) = entries.first() {
                        let detail = format!("transaction of {size} bytes exceeds the limit of {limit} bytes alone");
                        match dead_letter(flusher, entry, "transaction_too_large", detail).await {
                            Ok(()) => {
                                flusher.stats.note_dead_letter("transaction_too_large");
                                staged.push((entry.partition, entry.offset));
                                flushed.push(entry.offset);
                            }
                            Err(error) => return Err(failure(flushed, error)),
                        }
                    }
                }
                Err(error) => return Err(failure(flushed, error)),
            }
        }
    }
    Ok(flushed)
}

/// Counts what one run's part of a committed transaction did; adds the positions of the dead
/// letters it wrote to `staged`.
fn note_outcome(
    flusher: &Flusher,
    outcome: &crate::ingest::ApplyOutcome,
    entries: &[Entry],
    staged: &mut Vec<(i32, i64)>,
) {
    flusher.stats.note_applied(outcome);
    for (index, reason) in &outcome.dead_letters {
        flusher.stats.note_dead_letter(reason);
        if let Some(e) = entries.get(*index) {
            staged.push((e.partition, e.offset));
        }
    }
}

/// Applies one batch of each of several runs in one transaction, each run's checkpoint written in
/// it, so evicting many small runs costs one commit instead of one per run. Only for the embedded
/// dead-letter sink (letters staged here need no forwarding) and batches under the budgets
/// together; a refusal as too large falls back to one flush per run, which splits further.
/// Returns the offsets committed.
pub async fn flush_shared(flusher: Flusher, runs: Vec<(String, Batch)>) -> Result<Vec<i64>, FlushFailure> {
    let started = flusher.clock.now();
    let estimated = runs.iter().map(|(_, b)| b.estimated_bytes).sum();
    match apply_shared_once(&flusher, &runs).await {
        Ok((outcomes, txn_bytes, retries)) => {
            let seconds = flusher.clock.since(started).as_secs_f64();
            let reason = FlushReason::Evict;
            flusher.stats.note_flush(FlushNote { reason, estimated_bytes: estimated, txn_bytes, seconds, retries });
            let mut staged = Vec::new();
            let mut flushed = Vec::new();
            for ((_, batch), outcome) in runs.iter().zip(&outcomes) {
                note_outcome(&flusher, outcome, &batch.entries, &mut staged);
                flushed.extend(batch.entries.iter().map(|e| e.offset));
            }
            Ok(flushed)
        }
        Err(ApplyError::Kv(KvError::TransactionTooLarge { .. })) if runs.len() > 1 => {
            crate::metrics::ingest_error("txn_too_large_split");
            let mut flushed = Vec::new();
            for (run, batch) in runs {
                match flush_batches(flusher.clone(), run, vec![batch], None).await {
                    Ok(done) => flushed.extend(done),
                    Err(mut failure) => {
                        flushed.append(&mut failure.flushed);
                        failure.flushed = flushed;
                        return Err(failure);
                    }
                }
            }
            Ok(flushed)
        }
        Err(ApplyError::Kv(KvError::TransactionTooLarge { .. })) => {
            let mut runs = runs;
            let Some((run, batch)) = runs.pop() else { return Ok(Vec::new()) };
            flush_batches(flusher, run, vec![batch], None).await
        }
        Err(error) => Err(failure(Vec::new(), error)),
    }
}

/// One transaction applying the entries of each run (each run's checkpoint written in it): apply,
/// measure. Returns the outcomes (in the order of `runs`), the transaction's approximate size and
/// the retries it took.
async fn apply_in_one_transaction(
    flusher: &Flusher,
    runs: &[(&str, &[Entry])],
) -> Result<(Vec<crate::ingest::ApplyOutcome>, usize, u64), ApplyError> {
    // Opened only with a slot: waiting here costs nothing, waiting with an open transaction costs
    // its 5 s. The semaphore is never closed, so an error only means no bound.
    let _slot = flusher.transactions.acquire().await.ok();
    // Each record is written at its own receive time; the worker clock, read once before the retry
    // loop so every attempt writes the same bytes, only stands in where a record has none.
    let time = RecordTime::Received { clock: flusher.clock.unix_secs() };
    let mut attempts = 0u64;
    let (outcomes, size) = flusher
        .db
        .run(&flusher.retry, |tx| {
            attempts += 1;
            let applier = &flusher.applier;
            async move {
                let mut outcomes = Vec::with_capacity(runs.len());
                for (run, entries) in runs {
                    outcomes.push(applier.apply(&tx, run, entries, time, &mut |req| position_uuid(req)).await?);
                }
                let size = tx.approximate_size().await?;
                Ok::<_, ApplyError>((outcomes, size))
            }
        })
        .await?;
    Ok((outcomes, size, attempts.saturating_sub(1)))
}

/// [`apply_in_one_transaction`] for the batches of several runs.
async fn apply_shared_once(
    flusher: &Flusher,
    runs: &[(String, Batch)],
) -> Result<(Vec<crate::ingest::ApplyOutcome>, usize, u64), ApplyError> {
    let runs: Vec<(&str, &[Entry])> =
        runs.iter().map(|(run, batch)| (run.as_str(), batch.entries.as_slice())).collect();
    apply_in_one_transaction(flusher, &runs).await
}

/// [`apply_in_one_transaction`] for one run.
async fn apply_once(
    flusher: &Flusher,
    run: &str,
    entries: &[Entry],
) -> Result<(crate::ingest::ApplyOutcome, usize, u64), ApplyError> {
    let (mut outcomes, size, retries) = apply_in_one_transaction(flusher, &[(run, entries)]).await?;
    let outcome =
        outcomes.pop().ok_or_else(|| ApplyError::Corrupt("a transaction of one run gave no outcome".into()))?;
    Ok((outcome, size, retries))
}

fn failure(flushed: Vec<i64>, error: ApplyError) -> FlushFailure {
    let cause = match &error {
        ApplyError::Kv(KvError::TransactionTimedOut) => FailureCause::StorageTimeout,
        ApplyError::Kv(_) => FailureCause::Storage,
        ApplyError::Corrupt(_) => FailureCause::Corrupt,
    };
    crate::metrics::ingest_error(if matches!(error, ApplyError::Kv(_)) { "fdb" } else { "unknown" });
    FlushFailure { flushed, cause, error: error.into() }
}

/// Dead-letters one entry in its own transaction.
async fn dead_letter(flusher: &Flusher, entry: &Entry, reason: &str, detail: String) -> Result<(), ApplyError> {
    tracing::warn!(partition = entry.partition, offset = entry.offset, run = %entry.message.run_id, reason, "record dead-lettered");
    let letter = DeadLetter {
        reason: reason.to_owned(),
        key: Some(entry.message.run_id.clone()),
        value: None,
        timestamp: flusher.clock.unix_secs(),
        message_type: Some(entry.message.kind().as_str().to_owned()),
        detail,
    };
    flusher
        .db
        .run(&flusher.retry, |tx| {
            let letter = &letter;
            async move { flusher.applier.write_dead_letter(&tx, entry.partition, entry.offset, letter) }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode;
    use crate::storage::kv::Limits;
    use crate::storage::layout::Layout;

    fn entry(offset: i64, body: serde_json::Value) -> Entry {
        let mut m = serde_json::json!({"run_id": "r1", "timestamp": "2026-01-01T00:00:00Z"});
        for (k, v) in body.as_object().expect("object") {
            m[k] = v.clone();
        }
        let message = decode(&serde_json::to_vec(&m).expect("json")).expect("decodes");
        Entry { partition: 0, offset, message }
    }

    async fn flusher_with(limits: Limits) -> Flusher {
        let db = Database::memory_with_limits(limits);
        let layout = Layout::open(&db).await.expect("layout");
        let applier = Applier::new(layout.clone());
        let dead_letters =
            Arc::new(DeadLetters::embedded(db.clone(), applier.clone(), RetryOptions::default(), "t".to_owned()));
        Flusher {
            db,
            applier,
            retry: RetryOptions::default(),
            stats: Stats::new(),
            dead_letters,
            offload: None,
            transactions: Flusher::transaction_slots(),
            clock: Clock::System,
        }
    }

    /// A run's evicted batch: a `create_run` and a terminal line of `line_bytes` at `offset`, `offset + 1`.
    fn evicted(run: &str, offset: i64, line_bytes: usize) -> (String, Batch) {
        let mut entries = Vec::new();
        for (i, body) in [
            serde_json::json!({"type": "create_run", "payload": {"force_resume": false}}),
            serde_json::json!({"type": "log_terminal_line", "payload": {"line": "x".repeat(line_bytes), "step": 0}}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = entry(offset + i as i64, body);
            e.message.run_id = run.to_owned();
            entries.push(e);
        }
        (run.to_owned(), Batch { reason: FlushReason::Evict, estimated_bytes: 0, entries })
    }

    #[tokio::test]
    async fn evicted_runs_share_one_transaction_and_each_keeps_its_own_checkpoint() {
        let flusher = flusher_with(Limits::FDB).await;
        let runs = vec![evicted("r1", 0, 10), evicted("r2", 2, 10), evicted("r3", 4, 10)];
        let flushed = flush_shared(flusher.clone(), runs).await.map_err(|f| f.error).expect("flush");
        assert_eq!(flushed, vec![0, 1, 2, 3, 4, 5]);
        let tx = flusher.db.create_trx().expect("tx");
        for (run, last) in [("r1", 1), ("r2", 3), ("r3", 5)] {
            assert_eq!(flusher.applier.checkpoint(&tx, run, 0).await.expect("checkpoint"), Some(last), "{run}");
        }
        let counters = flusher.stats.snapshot();
        assert_eq!((counters.flushes["evict"], counters.applied), (1, 6), "one transaction: {counters:?}");
    }

    #[tokio::test]
    async fn evicted_runs_too_large_together_fall_back_to_a_transaction_each() {
        let flusher = flusher_with(Limits { max_txn_bytes: 20_000, ..Limits::FDB }).await;
        let runs = vec![evicted("r1", 0, 12_000), evicted("r2", 2, 12_000)];
        let flushed = flush_shared(flusher.clone(), runs).await.map_err(|f| f.error).expect("flush");
        assert_eq!(flushed, vec![0, 1, 2, 3]);
        let tx = flusher.db.create_trx().expect("tx");
        assert_eq!(flusher.applier.checkpoint(&tx, "r1", 0).await.expect("checkpoint"), Some(1));
        assert_eq!(flusher.applier.checkpoint(&tx, "r2", 0).await.expect("checkpoint"), Some(3));
        let counters = flusher.stats.snapshot();
        assert_eq!((counters.flushes["evict"], counters.applied, counters.dead_letters), (2, 4, 0), "{counters:?}");
    }

    #[tokio::test]
    async fn flush_triggers_split_on_transaction_too_large_and_dead_letters_a_lone_oversize_entry() {
        let flusher = flusher_with(Limits { max_txn_bytes: 20_000, ..Limits::FDB }).await;
        let mut entries = vec![entry(0, serde_json::json!({"type": "create_run", "payload": {"force_resume": false}}))];
        for i in 1..=60 {
            let payload = serde_json::json!({"name": "m", "value": i, "context": {}, "dtype": "int"});
            entries.push(entry(i, serde_json::json!({"type": "log_metric", "payload": payload})));
        }
        let line = "x".repeat(30_000);
        entries.push(entry(61, serde_json::json!({"type": "log_terminal_line", "payload": {"line": line, "step": 0}})));
        entries.push(entry(62, serde_json::json!({"type": "finish_run", "payload": {}})));
        let batch = Batch { reason: FlushReason::Shutdown, estimated_bytes: 0, entries };

        let flushed = flush_batches(flusher.clone(), "r1".to_owned(), vec![batch], None)
            .await
            .map_err(|f| f.error)
            .expect("flush");

        assert_eq!(flushed, (0..=62).collect::<Vec<i64>>(), "every offset is accounted for, in order");
        let tx = flusher.db.create_trx().expect("tx");
        let letters = flusher.applier.dead_letters(&tx, 0).await.expect("letters");
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].partition, letters[0].offset), (0, 61));
        assert_eq!(flusher.applier.checkpoint(&tx, "r1", 0).await.expect("checkpoint"), Some(62));
        let counters = flusher.stats.snapshot();
        assert!(counters.flushes["shutdown"] >= 3, "the batch was split: {counters:?}");
        assert_eq!((counters.applied, counters.dead_letters), (62, 1));
    }
}
