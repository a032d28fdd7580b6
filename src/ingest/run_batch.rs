//! The pure batching of one run's messages: when to flush, and what goes into each transaction.
//!
//! A [`RunBatch`] accumulates one run's decoded messages with their `(partition, offset)` and decides
//! flushes on estimated bytes (§1.10), message count and age. It does no IO and reads no clock: the
//! caller passes `now`, so tests drive time by hand. The run actor stays thin: it pushes, flushes
//! the sealed batches [`RunBatch::take`] returns, and arms a timer at [`RunBatch::deadline`].
//!
//! Rules, in the order [`RunBatch::push`] applies them:
//! 1. A `delete_run` seals the open batch (if any) with [`FlushReason::Delete`], then forms a batch
//!    of its own, also sealed with `Delete`. So the messages before it are applied first, in source
//!    order (the reference applies deletes after every other message of its poll, even later ones),
//!    and the delete, which may need many range-clearing transactions, never shares a transaction.
//! 2. If the open batch is older than `max_age`, it is sealed with [`FlushReason::Age`] first.
//! 3. If adding the message would take the open batch over `max_bytes`, the open batch is sealed
//!    with [`FlushReason::Bytes`] first, so a batch never exceeds the budget unless it holds one
//!    oversize message alone (the reference's rule, see [`super::estimate::chunk_ranges`]).
//! 4. The message is added; the batch is sealed with [`FlushReason::Count`] when it reaches
//!    `max_messages`, or with [`FlushReason::Bytes`] when it reaches `max_bytes`.
//!
//! One push can seal two batches (rules 1 to 3 then 4), so sealed batches queue up and
//! [`RunBatch::take`] returns them oldest first.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::estimate::estimated_bytes;
use super::message::{IngestMessage, MessageType};
use crate::config::IngestConfig;
use crate::storage::kv::Limits;

/// Why a batch was flushed; a bounded metric label and a word in logs and test names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The byte estimate reached the budget.
    Bytes,
    /// The message count reached the budget.
    Count,
    /// The oldest message waited `max_age`.
    Age,
    /// The process is shutting down.
    Shutdown,
    /// The run's partition was revoked.
    Revoke,
    /// A `delete_run` arrived (before it, and the delete itself).
    Delete,
    /// The run's actor was evicted to make room for another run in a full partition.
    Evict,
}

impl FlushReason {
    /// Every reason, for metric pre-registration.
    pub const ALL: [FlushReason; 7] = [
        FlushReason::Bytes,
        FlushReason::Count,
        FlushReason::Age,
        FlushReason::Shutdown,
        FlushReason::Revoke,
        FlushReason::Delete,
        FlushReason::Evict,
    ];

    /// Returns the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Bytes => "bytes",
            FlushReason::Count => "count",
            FlushReason::Age => "age",
            FlushReason::Shutdown => "shutdown",
            FlushReason::Revoke => "revoke",
            FlushReason::Delete => "delete",
            FlushReason::Evict => "evict",
        }
    }
}

impl std::fmt::Display for FlushReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a [`BatchBudget`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// A budget is zero.
    #[error("batch budget {field} must be greater than zero")]
    Zero { field: &'static str },
    /// The byte budget is above FoundationDB's transaction limit.
    #[error("batch budget max_bytes {0} exceeds foundationdb's limit of 10000000 bytes")]
    TooManyBytes(usize),
    /// The age budget is not below FoundationDB's transaction time limit.
    #[error("batch budget max_age {0:?} is not below foundationdb's limit of 5 s")]
    TooOld(Duration),
}

/// The limits of one batch, hence of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Estimated bytes (§1.10) at which a batch is flushed.
    pub max_bytes: usize,
    /// Messages at which a batch is flushed.
    pub max_messages: usize,
    /// Time after its first message at which a batch is flushed.
    pub max_age: Duration,
}

impl Default for BatchBudget {
    /// Returns 1 MB (FoundationDB's advice for healthy transactions, a tenth of its limit), 5,000
    /// messages (about 1.6 MB of gateway metrics by the estimate, so bytes usually decide) and
    /// 100 ms (the reference's `INGEST_BATCH_TIMEOUT_MS`, well under the 1 s visibility target).
    fn default() -> Self {
        BatchBudget { max_bytes: 1_000_000, max_messages: 5_000, max_age: Duration::from_millis(100) }
    }
}

impl BatchBudget {
    /// The budgets of a validated `[ingest]` section: the one conversion of its raw keys.
    pub fn from_config(ingest: &IngestConfig) -> Self {
        BatchBudget {
            max_bytes: ingest.txn_bytes().as_usize(),
            max_messages: ingest.max_messages_per_txn as usize,
            max_age: ingest.max_txn_age(),
        }
    }

    /// Rejects zero budgets, budgets above FoundationDB's transaction bytes and ages not below its
    /// lifetime ([`Limits::FDB`], the same rule as the configuration's).
    pub fn validate(&self) -> Result<(), BudgetError> {
        if self.max_bytes == 0 {
            return Err(BudgetError::Zero { field: "max_bytes" });
        }
        if self.max_messages == 0 {
            return Err(BudgetError::Zero { field: "max_messages" });
        }
        if self.max_age.is_zero() {
            return Err(BudgetError::Zero { field: "max_age" });
        }
        if self.max_bytes > Limits::FDB.max_txn_bytes {
            return Err(BudgetError::TooManyBytes(self.max_bytes));
        }
        if !Limits::FDB.within_lifetime(self.max_age) {
            return Err(BudgetError::TooOld(self.max_age));
        }
        Ok(())
    }
}

/// One source record of the run: where it came from and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Source partition.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The decoded message.
    pub message: IngestMessage,
}

/// A sealed batch: the entries of one transaction, in source order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Why it was sealed.
    pub reason: FlushReason,
    /// The entries, in the order they were pushed.
    pub entries: Vec<Entry>,
    /// Sum of the entries' §1.10 estimates.
    pub estimated_bytes: usize,
}

impl Batch {
    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Tells whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Returns the `(partition, offset)` of the last entry: the run's applied position once the
    /// batch commits.
    pub fn last_position(&self) -> Option<(i32, i64)> {
        self.entries.last().map(|e| (e.partition, e.offset))
    }

    /// Tells whether this batch is a lone `delete_run`.
    pub fn is_delete(&self) -> bool {
        self.entries.len() == 1 && self.entries[0].message.kind() == MessageType::DeleteRun
    }
}

/// Accumulates one run's messages and decides when to flush them.
#[derive(Debug)]
pub struct RunBatch {
    budget: BatchBudget,
    open: Vec<Entry>,
    open_bytes: usize,
    open_since: Option<Instant>,
    sealed: VecDeque<Batch>,
}

impl RunBatch {
    /// Creates an empty batch with the given (validated) budget.
    pub fn new(budget: BatchBudget) -> Self {
        RunBatch { budget, open: Vec::new(), open_bytes: 0, open_since: None, sealed: VecDeque::new() }
    }

    /// Returns the budget.
    pub fn budget(&self) -> &BatchBudget {
        &self.budget
    }

    /// Adds a message received at `now`. Returns the reason of the first batch this push sealed,
    /// or `None` when nothing is due; sealed batches wait in [`RunBatch::take`].
    pub fn push(&mut self, entry: Entry, now: Instant) -> Option<FlushReason> {
        let mut first: Option<FlushReason> = None;
        let mut note = |r: FlushReason| {
            first.get_or_insert(r);
        };
        if entry.message.kind() == MessageType::DeleteRun {
            if self.seal(FlushReason::Delete) {
                note(FlushReason::Delete);
            }
            let estimated_bytes = estimated_bytes(&entry.message);
            self.sealed.push_back(Batch { reason: FlushReason::Delete, entries: vec![entry], estimated_bytes });
            note(FlushReason::Delete);
            return first;
        }
        if self.is_expired(now) && self.seal(FlushReason::Age) {
            note(FlushReason::Age);
        }
        let size = estimated_bytes(&entry.message);
        if !self.open.is_empty() && self.open_bytes.saturating_add(size) > self.budget.max_bytes {
            self.seal(FlushReason::Bytes);
            note(FlushReason::Bytes);
        }
        if self.open.is_empty() {
            self.open_since = Some(now);
        }
        self.open.push(entry);
        self.open_bytes = self.open_bytes.saturating_add(size);
        if self.open.len() >= self.budget.max_messages {
            self.seal(FlushReason::Count);
            note(FlushReason::Count);
        } else if self.open_bytes >= self.budget.max_bytes {
            self.seal(FlushReason::Bytes);
            note(FlushReason::Bytes);
        }
        first
    }

    /// Seals the open batch with [`FlushReason::Age`] when its first message waited `max_age` by
    /// `now`. Returns the reason when it did.
    pub fn tick(&mut self, now: Instant) -> Option<FlushReason> {
        (self.is_expired(now) && self.seal(FlushReason::Age)).then_some(FlushReason::Age)
    }

    /// Seals the open batch for an external reason (shutdown, revoke). Returns `false` when there
    /// was nothing open.
    pub fn flush(&mut self, reason: FlushReason) -> bool {
        self.seal(reason)
    }

    /// Removes and returns the oldest sealed batch.
    pub fn take(&mut self) -> Option<Batch> {
        self.sealed.pop_front()
    }

    /// Tells whether a sealed batch waits in [`RunBatch::take`].
    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Returns when the open batch becomes due for an age flush, to arm a timer.
    pub fn deadline(&self) -> Option<Instant> {
        self.open_since.map(|since| since + self.budget.max_age)
    }

    /// Returns the number of messages not yet sealed.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Returns the estimated bytes not yet sealed.
    pub fn open_bytes(&self) -> usize {
        self.open_bytes
    }

    /// Returns the number of messages held, open or sealed.
    pub fn pending_len(&self) -> usize {
        self.open.len() + self.sealed.iter().map(Batch::len).sum::<usize>()
    }

    /// Returns the lowest offset held per partition (open or sealed): the run's contribution to
    /// the partition's low watermark of unflushed records.
    pub fn lowest_offset(&self, partition: i32) -> Option<i64> {
        self.sealed
            .iter()
            .flat_map(|b| b.entries.iter())
            .chain(self.open.iter())
            .filter(|e| e.partition == partition)
            .map(|e| e.offset)
            .min()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    fn seal(&mut self, reason: FlushReason) -> bool {
        if self.open.is_empty() {
            return false;
        }
        let entries = std::mem::take(&mut self.open);
        let estimated_bytes = std::mem::take(&mut self.open_bytes);
        self.open_since = None;
        self.sealed.push_back(Batch { reason, entries, estimated_bytes });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::estimate::chunk_ranges;
    use crate::ingest::message::{Context, CreateRun, LogMetric, LogTerminalLine, Payload};
    use crate::storage::value::Value;

    const MS: Duration = Duration::from_millis(1);

    fn metric(step: i64) -> IngestMessage {
        IngestMessage::new(
            "r",
            0.0,
            Payload::LogMetric(LogMetric {
                name: "loss".into(),
                value: Value::Float(0.5),
                step: Some(step),
                epoch: None,
                context: Context::empty().into(),
                dtype: "float".into(),
            }),
        )
    }

    fn line(len: usize) -> IngestMessage {
        IngestMessage::new("r", 0.0, Payload::LogTerminalLine(LogTerminalLine { line: "x".repeat(len), step: 0 }))
    }

    fn entry(offset: i64, message: IngestMessage) -> Entry {
        Entry { partition: 0, offset, message }
    }

    fn budget(max_bytes: usize, max_messages: usize, max_age_ms: u64) -> BatchBudget {
        BatchBudget { max_bytes, max_messages, max_age: Duration::from_millis(max_age_ms) }
    }

    fn offsets(batch: &Batch) -> Vec<i64> {
        batch.entries.iter().map(|e| e.offset).collect()
    }

    #[test]
    fn push_below_every_budget_does_not_flush() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(10_000, 10, 100));
        for i in 0..9 {
            assert_eq!(b.push(entry(i, metric(i)), t0 + MS * u32::try_from(i).expect("small")), None);
        }
        assert_eq!(b.open_len(), 9);
        assert_eq!(b.open_bytes(), 9 * 316);
        assert!(b.take().is_none());
        assert_eq!(b.tick(t0 + 99 * MS), None);
        assert_eq!(b.deadline(), Some(t0 + 100 * MS));
    }

    #[test]
    fn push_triggers_flush_on_count() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000_000, 3, 100));
        assert_eq!(b.push(entry(0, metric(0)), t0), None);
        assert_eq!(b.push(entry(1, metric(1)), t0), None);
        assert_eq!(b.push(entry(2, metric(2)), t0), Some(FlushReason::Count));
        let batch = b.take().expect("sealed");
        assert_eq!((batch.reason, offsets(&batch)), (FlushReason::Count, vec![0, 1, 2]));
        assert_eq!(batch.last_position(), Some((0, 2)));
        assert_eq!(b.open_len(), 0);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn push_triggers_flush_on_bytes_before_the_message_that_would_overflow() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000, 100, 100));
        assert_eq!(b.push(entry(0, metric(0)), t0), None); // 316
        assert_eq!(b.push(entry(1, metric(1)), t0), None); // 632
        assert_eq!(b.push(entry(2, metric(2)), t0), None); // 948
        assert_eq!(b.push(entry(3, metric(3)), t0), Some(FlushReason::Bytes)); // 1264 > 1000
        let batch = b.take().expect("sealed");
        assert_eq!((batch.reason, offsets(&batch), batch.estimated_bytes), (FlushReason::Bytes, vec![0, 1, 2], 948));
        assert_eq!(b.open_len(), 1);
        assert!(batch.estimated_bytes <= 1_000);
    }

    #[test]
    fn push_triggers_flush_on_bytes_when_the_budget_is_reached_exactly() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000, 100, 100));
        assert_eq!(b.push(entry(0, line(0)), t0), None); // 500
        assert_eq!(b.push(entry(1, line(0)), t0), Some(FlushReason::Bytes)); // 1000
        assert_eq!(offsets(&b.take().expect("sealed")), vec![0, 1]);
    }

    #[test]
    fn push_triggers_flush_on_bytes_for_one_oversize_message_alone() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000, 100, 100));
        assert_eq!(b.push(entry(0, metric(0)), t0), None);
        // The line first seals the metric, then is sealed alone as it exceeds the budget itself.
        assert_eq!(b.push(entry(1, line(5_000)), t0), Some(FlushReason::Bytes));
        let first = b.take().expect("first");
        let second = b.take().expect("second");
        assert_eq!((offsets(&first), offsets(&second)), (vec![0], vec![1]));
        assert_eq!(second.reason, FlushReason::Bytes);
        assert!(b.take().is_none());
        assert_eq!(b.open_len(), 0);
    }

    #[test]
    fn tick_triggers_flush_on_age() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000_000, 100, 100));
        b.push(entry(0, metric(0)), t0);
        b.push(entry(1, metric(1)), t0 + 50 * MS);
        assert_eq!(b.tick(t0 + 99 * MS), None);
        assert_eq!(b.tick(t0 + 100 * MS), Some(FlushReason::Age));
        let batch = b.take().expect("sealed");
        assert_eq!((batch.reason, offsets(&batch)), (FlushReason::Age, vec![0, 1]));
        // Nothing open: a late tick does nothing.
        assert_eq!(b.tick(t0 + 500 * MS), None);
    }

    #[test]
    fn push_triggers_flush_on_age_when_the_timer_was_missed() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000_000, 100, 100));
        b.push(entry(0, metric(0)), t0);
        assert_eq!(b.push(entry(1, metric(1)), t0 + 150 * MS), Some(FlushReason::Age));
        assert_eq!(offsets(&b.take().expect("sealed")), vec![0]);
        // The new message starts a new batch whose age counts from its own arrival.
        assert_eq!(b.deadline(), Some(t0 + 250 * MS));
    }

    #[test]
    fn flush_triggers_flush_on_shutdown_and_revoke() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(BatchBudget::default());
        assert!(!b.flush(FlushReason::Shutdown), "nothing open, nothing sealed");
        b.push(entry(0, metric(0)), t0);
        assert!(b.flush(FlushReason::Shutdown));
        assert_eq!(b.take().expect("sealed").reason, FlushReason::Shutdown);
        b.push(entry(1, metric(1)), t0);
        assert!(b.flush(FlushReason::Revoke));
        assert_eq!(b.take().expect("sealed").reason, FlushReason::Revoke);
    }

    #[test]
    fn delete_run_triggers_flush_on_delete_before_and_alone() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(BatchBudget::default());
        b.push(entry(0, metric(0)), t0);
        b.push(entry(1, metric(1)), t0);
        let delete = IngestMessage::new("r", 0.0, Payload::DeleteRun);
        assert_eq!(b.push(entry(2, delete), t0), Some(FlushReason::Delete));
        let before = b.take().expect("before");
        let del = b.take().expect("delete");
        assert_eq!((before.reason, offsets(&before)), (FlushReason::Delete, vec![0, 1]));
        assert_eq!((del.reason, offsets(&del)), (FlushReason::Delete, vec![2]));
        assert!(del.is_delete() && !before.is_delete());
        // Later messages start a new batch (the tombstone will drop them at apply time).
        assert_eq!(b.push(entry(3, metric(2)), t0), None);
        assert_eq!(b.open_len(), 1);
    }

    #[test]
    fn delete_run_on_an_empty_batch_flushes_only_itself() {
        let mut b = RunBatch::new(BatchBudget::default());
        let delete = IngestMessage::new("r", 0.0, Payload::DeleteRun);
        assert_eq!(b.push(entry(7, delete), Instant::now()), Some(FlushReason::Delete));
        assert_eq!(offsets(&b.take().expect("delete")), vec![7]);
        assert!(b.take().is_none());
    }

    #[test]
    fn batches_split_like_the_reference_chunking() {
        let t0 = Instant::now();
        let sizes_of = |n: usize| {
            if n.is_multiple_of(7) {
                line(n * 40)
            } else if n.is_multiple_of(3) {
                line(n)
            } else {
                metric(0)
            }
        };
        let messages: Vec<IngestMessage> = (0..200).map(sizes_of).collect();
        let sizes: Vec<usize> = messages.iter().map(estimated_bytes).collect();
        for (max_bytes, max_messages) in [(2_000, 5), (5_000, 100), (1_000, 3), (100_000, 17)] {
            let mut b = RunBatch::new(budget(max_bytes, max_messages, 1_000));
            let mut got = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                b.push(entry(i64::try_from(i).expect("small"), m.clone()), t0);
                while let Some(batch) = b.take() {
                    got.push(offsets(&batch));
                }
            }
            b.flush(FlushReason::Shutdown);
            while let Some(batch) = b.take() {
                got.push(offsets(&batch));
            }
            let expected: Vec<Vec<i64>> = chunk_ranges(&sizes, max_messages, max_bytes)
                .into_iter()
                .map(|r| r.map(|i| i64::try_from(i).expect("small")).collect())
                .collect();
            assert_eq!(got, expected, "max_bytes {max_bytes} max_messages {max_messages}");
        }
    }

    #[test]
    fn lowest_offset_covers_open_and_sealed_entries() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(budget(1_000_000, 2, 100));
        b.push(Entry { partition: 1, offset: 10, message: metric(0) }, t0);
        b.push(Entry { partition: 1, offset: 11, message: metric(1) }, t0); // sealed on count
        b.push(Entry { partition: 1, offset: 12, message: metric(2) }, t0);
        assert_eq!(b.lowest_offset(1), Some(10));
        assert_eq!(b.pending_len(), 3);
        b.take();
        assert_eq!(b.lowest_offset(1), Some(12));
        assert_eq!(b.lowest_offset(2), None);
    }

    #[test]
    fn create_run_is_batched_like_any_other_message() {
        let t0 = Instant::now();
        let mut b = RunBatch::new(BatchBudget::default());
        let create =
            IngestMessage::new("r", 0.0, Payload::CreateRun(CreateRun { client_datetime: None, force_resume: false }));
        assert_eq!(b.push(entry(0, create), t0), None);
        assert_eq!(b.open_bytes(), 500);
    }

    #[test]
    fn flush_reason_labels_are_distinct_and_lowercase() {
        let labels: Vec<&str> = FlushReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["bytes", "count", "age", "shutdown", "revoke", "delete", "evict"]);
    }

    #[test]
    fn budget_validate_accepts_the_default_and_the_limits() {
        assert_eq!(BatchBudget::default().validate(), Ok(()));
        assert_eq!(budget(10_000_000, 1, 4_999).validate(), Ok(()));
    }

    #[test]
    fn budget_validate_rejects_zero_and_values_above_foundationdb_limits() {
        assert_eq!(budget(0, 1, 1).validate(), Err(BudgetError::Zero { field: "max_bytes" }));
        assert_eq!(budget(1, 0, 1).validate(), Err(BudgetError::Zero { field: "max_messages" }));
        assert_eq!(budget(1, 1, 0).validate(), Err(BudgetError::Zero { field: "max_age" }));
        assert_eq!(budget(10_000_001, 1, 1).validate(), Err(BudgetError::TooManyBytes(10_000_001)));
        assert_eq!(budget(1, 1, 5_001).validate(), Err(BudgetError::TooOld(Duration::from_millis(5_001))));
    }

    #[test]
    fn an_age_budget_of_five_seconds_is_refused_by_the_batcher_as_by_the_configuration() {
        assert_eq!(budget(1, 1, 5_000).validate(), Err(BudgetError::TooOld(Duration::from_millis(5_000))));
        let config = crate::config::Config::from_toml_str("f.toml", "[ingest]\nmax_txn_age_ms = 5000\n").unwrap();
        assert!(config.validate().is_err(), "the configuration refuses the same age");
        let config = crate::config::Config::from_toml_str("f.toml", "[ingest]\nmax_txn_age_ms = 4999\n").unwrap();
        config.validate().unwrap();
        assert_eq!(BatchBudget::from_config(&config.ingest).validate(), Ok(()));
    }
}
