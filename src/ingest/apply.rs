//! Applies one run's batch of decoded messages to storage in one transaction, exactly once.
//!
//! [`Applier::apply`] runs the handlers of `ingest-storage.md` §1.7 over a [`Batch`]'s entries
//! inside the caller's transaction, writing the reference's keys and values, and records in the
//! same transaction what it did in our own directory (`matyan_rs`):
//!
//! | Key (under ⟨ours⟩) | Value |
//! |---|---|
//! | `("applied", R, partition)` | mp(int): the highest offset of `partition` applied to run R |
//! | `("outbox", partition, offset)` | mp(map) `{"type":"run_deleted","timestamp":RFC 3339,"payload":{"run_id":R}}` |
//! | `("dlq", partition, offset)` | mp(map) `{"reason","key","value","timestamp","type","detail"}` |
//!
//! Exactly once: an entry at or below its partition's checkpoint is a replay and is skipped; the
//! checkpoint advances in the transaction that writes the data, so a commit either records both or
//! neither. A replayed batch therefore changes nothing, unlike the reference, which appends
//! automatic steps again and resets meta on replay (§1.12).
//!
//! Deliberate departures from the reference (§6), each named in a test of `tests/ingest_apply.rs`:
//! - `create_run` on an established run (one whose meta has `created_at`) takes the resume path
//!   whatever `force_resume` says: `active=True`, `finalized_at=None`, `client_start_ts` when given.
//!   A redelivered or repeated `create_run` thus never resets name, experiment, archived flag or
//!   `created_at`, and never leaves stale index entries (quirk 4). A run whose meta is partial (made
//!   by a handler that does not create runs, quirk 5) is created in full, stale tier-1 entries
//!   removed.
//! - The context key `(R,"contexts",ctx_id)` is written in the transaction of the points, once per
//!   transaction and context; no cache outlives a transaction (quirk 7).
//! - `add_tag`/`remove_tag` are idempotent: `run_count` moves only when the link changes (quirk 8).
//! - Times (`created_at`, `updated_at`, `finalized_at`, a point's `time`) are each record's
//!   envelope `timestamp`, the gateway's receive time, where the reference reads the worker clock at
//!   each write (quirk 1): a batch is one transaction, and a replay must write the same bytes
//!   ([`RecordTime`]; `tests/ingest_pipeline.rs`).
//! - Tombstones win: a run with `("_deleted", R)` gets no data message applied; the messages are
//!   counted, and the checkpoint still advances. The tombstone is read in each transaction, never
//!   cached, so a run restored or cleared by any process is ingested from the next flush on (the
//!   reference caches deleted runs until its worker restarts, §2.2 step 5, quirk 13).
//! - `delete_run` records its `run_deleted` control event in the outbox in the same transaction, so
//!   it is never lost (quirk 11); a publisher sends and removes outbox entries later.
//! - A message that fails deterministically (a value that cannot be encoded, unreadable stored
//!   data) is dead-lettered, and its neighbours are applied (quirk 6). Values are encoded (and
//!   hparam trees flattened) before the message's first write, so an encoding failure leaves no
//!   partial write; stored data that does not decode can fail a handler midway, and the writes it
//!   already issued stay. Limit violations (a key or value too large) surface only at commit as
//!   KV errors: the caller splits the batch and dead-letters a lone failing record with
//!   [`Applier::write_dead_letter`].
//!
//! Trace info (`dtype`, `last`, `last_step`) and the `("trace", name, R)` index entry are written
//! once per sequence and transaction, after the last point (and before a `delete_run`): the final
//! keys are those of writing them after every point, as the reference does, for fewer writes.
//! A multi-key `log_hparams` top level is set at the empty attrs path, replacing the whole attrs
//! tree, as the reference's unwrapping does.
//!
//! Ids of experiments and tags created on the fly come from the caller's `ids` function, called only
//! when a name is unknown, with the record's position. [`position_uuid`] derives them from that
//! position, so the same record always gets the same uuid: the default for the ingest path.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::dead_letter;
use super::message::{
    BlobRef, CreateRun, FinishRun, LogCustomObject, LogHparams, LogMetric, LogRecord, LogTerminalLine, MessageType,
    Payload, SetRunProperty, TagChange,
};
use super::run_batch::Entry;
use crate::fast_hash::FastMap;
use crate::storage::kv::{KvError, RangeOption, RetryableError, Transaction};
use crate::storage::layout::ours::OutboxAt;
use crate::storage::layout::sequences::SeqError;
use crate::storage::layout::{EntityKind, Layout, LayoutError, SeqId, SeqWrite, TraceInfo};
use crate::storage::tree;
use crate::storage::tuple::Elem;
use crate::storage::value::{self, Value};

pub use crate::clock::rfc3339_utc;
pub use crate::storage::layout::ours::{APPLIED, CONTROL_DLQ, DLQ, OUTBOX};

/// Errors that fail a whole batch: the caller retries the transaction or splits the batch.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The KV layer failed (conflict, too large, timeout, engine).
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Our own bookkeeping (a checkpoint) does not decode.
    #[error("corrupt bookkeeping data: {0}")]
    Corrupt(String),
}

impl RetryableError for ApplyError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            ApplyError::Kv(e) => Some(e),
            ApplyError::Corrupt(_) => None,
        }
    }
}

/// What asks for a new entity id: an experiment or tag `name` unknown so far, created on behalf of
/// the record at `(partition, offset)` of run `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRequest<'a> {
    /// Experiment or tag.
    pub kind: EntityKind,
    /// The entity's name.
    pub name: &'a str,
    /// The run of the record.
    pub run: &'a str,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
}

/// Derives a uuid (version 4 layout, lowercase, hyphenated) from the request: SHA-256 of the kind,
/// name, partition and offset. The same record always gets the same id, so a transaction that runs
/// twice (after `commit_unknown_result`) or two workers racing on one record agree on it, and two
/// distinct creations never share an id.
pub fn position_uuid(req: &IdRequest<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"matyan-rs/entity-id\0");
    h.update(req.kind.key_name().as_bytes());
    h.update(b"\0");
    h.update(req.name.as_bytes());
    h.update(b"\0");
    h.update(req.partition.to_be_bytes());
    h.update(req.offset.to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// What one [`Applier::apply`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// Messages applied, by type (for `matyan_ingestion_messages_processed_total{message_type}`).
    pub applied: HashMap<MessageType, u64>,
    /// Entries at or below their partition's checkpoint, skipped.
    pub replayed: usize,
    /// Data messages skipped because the run has a tombstone.
    pub tombstoned: usize,
    /// Entries that failed deterministically, by index in the input, with a bounded reason. Each has
    /// a `("dlq", partition, offset)` record written in the same transaction.
    pub dead_letters: Vec<(usize, &'static str)>,
    /// Whether a `delete_run` was applied (its `run_deleted` event is in the outbox).
    pub deleted: bool,
    /// The checkpoints written, `(partition, offset)`; empty when nothing advanced.
    pub checkpoints: Vec<(i32, i64)>,
}

impl ApplyOutcome {
    /// Returns the number of messages applied, all types together.
    pub fn applied_total(&self) -> u64 {
        self.applied.values().sum()
    }

    /// Returns the number applied of one type.
    pub fn applied_of(&self, kind: MessageType) -> u64 {
        self.applied.get(&kind).copied().unwrap_or(0)
    }
}

/// A `run_deleted` control event waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Partition of the `delete_run` record (with `offset`, the event's id).
    pub partition: i32,
    /// Offset of the `delete_run` record.
    pub offset: i64,
    /// The event envelope `{"type","timestamp","payload"}` (§1.5).
    pub event: Value,
}

pub use super::dead_letter::DeadLetter;

/// A stored dead letter with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The stored map, as `write_dead_letter` documents it.
    pub record: Value,
}

/// Applies batches of one run's messages to the Matyan layout (see the module docs).
#[derive(Debug, Clone)]
pub struct Applier {
    layout: Layout,
}

/// Why one message failed inside a handler.
enum Fail {
    /// A KV error: fails the batch.
    Kv(KvError),
    /// A deterministic failure of this message: dead-letter it.
    Message { reason: &'static str, detail: String },
}

impl From<KvError> for Fail {
    fn from(e: KvError) -> Self {
        Fail::Kv(e)
    }
}

impl From<LayoutError> for Fail {
    fn from(e: LayoutError) -> Self {
        let reason = match &e {
            LayoutError::Kv(k) => return Fail::Kv(k.clone()),
            LayoutError::Corrupt(_) => "corrupt_data",
            LayoutError::Encode(_) => "encode_error",
            LayoutError::Conflict(_) => "name_conflict",
            LayoutError::Invalid(_) => "invalid",
        };
        Fail::Message { reason, detail: e.to_string() }
    }
}

impl From<SeqError> for Fail {
    fn from(e: SeqError) -> Self {
        match e {
            SeqError::Kv(k) => Fail::Kv(k),
            SeqError::Corrupt(c) => Fail::Message { reason: "corrupt_data", detail: c },
            e @ SeqError::KeyLimit { .. } => Fail::Message { reason: "corrupt_data", detail: e.to_string() },
        }
    }
}

fn encode(v: &Value) -> Result<Vec<u8>, Fail> {
    value::encode(v).map_err(|e| Fail::Message { reason: "encode_error", detail: e.to_string() })
}

/// Checks that a tree value flattens (keys and leaves encodable) before anything is written.
fn check_tree(path: &[String], node: &Value) -> Result<(), Fail> {
    let prefix: Vec<Elem> = path.iter().map(Elem::from).collect();
    tree::flatten(&prefix, node)
        .map(|_| ())
        .map_err(|e| Fail::Message { reason: "encode_error", detail: e.to_string() })
}

/// Where the times written for each record come from (`created_at`, `updated_at`,
/// `finalized_at`, a point's `time`, an entity's `created_at`).
///
/// The reference stores `time.time()` of each write (§1.7), so a run's records get their own times.
/// Ours applies a batch in one transaction: one clock reading for it would give every point of a
/// backlogged run the same time and a run created and finished in one batch `created_at ==
/// finalized_at`. So each record is written at its envelope `timestamp`, the gateway's receive
/// time (µs): a replayed or retried record writes the same bytes whenever and in whichever batch it
/// is applied, and a backlog does not move the times. Records of one frame share its receive time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RecordTime {
    /// Every record at this one time: the golden fixtures and worked examples pin the reference's
    /// clock so.
    Pinned(f64),
    /// Each record at its envelope `timestamp`; `clock` (the worker's, read once per transaction)
    /// for a record whose timestamp is not a finite number, and for what is about the apply
    /// itself rather than a record (dead letters, the `run_deleted` event).
    Received { clock: f64 },
}

impl From<f64> for RecordTime {
    fn from(now: f64) -> Self {
        RecordTime::Pinned(now)
    }
}

impl RecordTime {
    /// The time written for the record `entry`.
    pub fn of(self, entry: &Entry) -> f64 {
        match self {
            RecordTime::Pinned(now) => now,
            RecordTime::Received { clock } => {
                let t = entry.message.timestamp;
                if t.is_finite() { t } else { clock }
            }
        }
    }

    /// The worker clock of the apply (the pinned time when pinned).
    pub fn clock(self) -> f64 {
        match self {
            RecordTime::Pinned(now) | RecordTime::Received { clock: now } => now,
        }
    }
}

/// Per-transaction state of one apply call.
struct Scope<'a> {
    layout: &'a Layout,
    tx: &'a Transaction,
    run: &'a str,
    /// The time of the record being handled ([`RecordTime::of`]).
    now: f64,
    /// Context ids whose key this transaction already wrote.
    contexts: HashSet<u32>,
    /// Trace info of the sequences written so far, written once per sequence by
    /// [`Scope::flush_traces`]: the final keys equal those of writing after every point, with
    /// fewer writes (a point costs four keys instead of nine).
    traces: Vec<PendingTrace>,
    /// Index in `traces` of each `(ctx_id, name)`.
    trace_slots: SeriesSlots,
    /// Points of the sequences written so far, written as one batch per sequence by
    /// [`Scope::flush_points`]: the chunked layout rewrites a tail chunk once per transaction
    /// rather than once per point.
    points: Vec<PendingPoints>,
    /// Index in `points` of each `(ctx_id, name)`.
    point_slots: SeriesSlots,
}

/// Slots of a transaction's sequences by `(ctx_id, name)`, looked up without building a key: a
/// lookup per point used to allocate the name twice.
#[derive(Default)]
struct SeriesSlots(FastMap<u32, FastMap<Box<str>, usize>>);

impl SeriesSlots {
    fn get(&self, ctx_id: u32, name: &str) -> Option<usize> {
        self.0.get(&ctx_id)?.get(name).copied()
    }

    fn insert(&mut self, ctx_id: u32, name: &str, slot: usize) {
        self.0.entry(ctx_id).or_default().insert(name.into(), slot);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The points of one sequence in this transaction, in message order.
struct PendingPoints {
    ctx_id: u32,
    name: String,
    /// `(step, value, epoch, time)`; the time is that of the point's record.
    rows: Vec<(i64, Vec<u8>, Option<i64>, f64)>,
    /// The highest stored step, read once, when an automatic step first needs it.
    stored_last: Option<Option<i64>>,
    /// The highest step in `rows`.
    max_step: Option<i64>,
}

/// The latest trace info of one sequence in this transaction.
struct PendingTrace {
    ctx_id: u32,
    name: String,
    dtype: String,
    /// The latest non-null value; `None` leaves the stored `last` alone.
    last: Option<Value>,
    last_step: i64,
}

impl Applier {
    /// Builds an applier on a layout.
    pub fn new(layout: Layout) -> Self {
        Self { layout }
    }

    /// Returns the layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The checkpoint key of `run` in `partition` ([`Ours::checkpoint`](crate::storage::layout::Ours::checkpoint)).
    pub fn checkpoint_key(&self, run: &str, partition: i32) -> Vec<u8> {
        self.layout.ours.checkpoint(run, partition)
    }

    /// Reads the highest applied offset of `partition` for `run` (`None` before the first apply).
    pub async fn checkpoint(&self, tx: &Transaction, run: &str, partition: i32) -> Result<Option<i64>, ApplyError> {
        let Some(bytes) = tx.get(&self.checkpoint_key(run, partition), false).await? else {
            return Ok(None);
        };
        match value::decode(&bytes) {
            Ok(Value::Int(i)) => {
                i64::try_from(i).map(Some).map_err(|_| ApplyError::Corrupt(format!("checkpoint {i} out of range")))
            }
            Ok(other) => Err(ApplyError::Corrupt(format!("checkpoint is a {}", other.type_name()))),
            Err(e) => Err(ApplyError::Corrupt(format!("checkpoint: {e}"))),
        }
    }

    /// Applies `entries` (one run's records, in source order) in `tx`, which the caller commits.
    ///
    /// `time` gives the time stored in every time field, per record ([`RecordTime`]; a bare `f64`
    /// pins one time for all); `ids` makes the uuid of an experiment
    /// or tag created on the fly ([`position_uuid`] is the deterministic choice). Entries at or below
    /// their partition's checkpoint are skipped, data messages of a tombstoned run are skipped, and
    /// messages failing deterministically are dead-lettered; KV errors fail the call, and then
    /// nothing of the transaction may be committed.
    pub async fn apply(
        &self,
        tx: &Transaction,
        run: &str,
        entries: &[Entry],
        time: impl Into<RecordTime>,
        ids: &mut (dyn FnMut(&IdRequest<'_>) -> String + Send),
    ) -> Result<ApplyOutcome, ApplyError> {
        let time = time.into();
        let now = time.clock();
        let mut outcome = ApplyOutcome::default();
        // The running high-water mark per partition: the stored checkpoint, then each entry seen.
        let mut marks: Vec<(i32, Option<i64>, Option<i64>)> = Vec::new(); // (partition, stored, current)
        let mut scope = Scope {
            layout: &self.layout,
            tx,
            run,
            now,
            contexts: HashSet::new(),
            traces: Vec::new(),
            trace_slots: SeriesSlots::default(),
            points: Vec::new(),
            point_slots: SeriesSlots::default(),
        };
        let mut deleted: Option<bool> = None;
        for (index, entry) in entries.iter().enumerate() {
            let slot = match marks.iter().position(|m| m.0 == entry.partition) {
                Some(i) => i,
                None => {
                    let stored = self.checkpoint(tx, run, entry.partition).await?;
                    marks.push((entry.partition, stored, stored));
                    marks.len() - 1
                }
            };
            if marks[slot].2.is_some_and(|mark| entry.offset <= mark) {
                outcome.replayed += 1;
                continue;
            }
            marks[slot].2 = Some(entry.offset);
            let msg = &entry.message;
            if msg.run_id != run {
                let detail = format!("entry of run {:?} in a batch of run {run:?}", msg.run_id);
                self.dead_letter(tx, &mut outcome, index, entry, "wrong_run", detail, now)?;
                continue;
            }
            let is_delete = matches!(msg.payload, Payload::DeleteRun);
            if !is_delete {
                let tombstoned = match deleted {
                    Some(d) => d,
                    None => {
                        let d = self.layout.indexes().is_deleted(tx, run).await?;
                        deleted = Some(d);
                        d
                    }
                };
                if tombstoned {
                    outcome.tombstoned += 1;
                    continue;
                }
            }
            scope.now = time.of(entry);
            match scope.handle(entry, ids).await {
                Ok(()) => {
                    *outcome.applied.entry(msg.kind()).or_insert(0) += 1;
                    if is_delete {
                        self.record_deleted(tx, run, entry, now).await?;
                        outcome.deleted = true;
                        deleted = Some(true);
                        // Contexts written before the delete are gone with the run.
                        scope.contexts.clear();
                    }
                }
                Err(Fail::Kv(e)) => return Err(ApplyError::Kv(e)),
                Err(Fail::Message { reason, detail }) => {
                    self.dead_letter(tx, &mut outcome, index, entry, reason, detail, now)?;
                }
            }
        }
        scope.flush_points().await.map_err(|e| match e {
            Fail::Kv(k) => ApplyError::Kv(k),
            Fail::Message { detail, .. } => ApplyError::Corrupt(format!("sequence points: {detail}")),
        })?;
        scope.flush_traces().map_err(|e| match e {
            Fail::Kv(k) => ApplyError::Kv(k),
            Fail::Message { detail, .. } => ApplyError::Corrupt(format!("trace info: {detail}")),
        })?;
        for (partition, stored, current) in marks {
            if let Some(offset) = current.filter(|c| Some(*c) != stored) {
                let mut buf = Vec::with_capacity(9);
                value::encode_i64(offset, &mut buf);
                tx.set(&self.checkpoint_key(run, partition), &buf);
                outcome.checkpoints.push((partition, offset));
            }
        }
        Ok(outcome)
    }

    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &self,
        tx: &Transaction,
        outcome: &mut ApplyOutcome,
        index: usize,
        entry: &Entry,
        reason: &'static str,
        detail: String,
        now: f64,
    ) -> Result<(), ApplyError> {
        tracing::warn!(
            partition = entry.partition,
            offset = entry.offset,
            run = %entry.message.run_id,
            message_type = entry.message.kind().as_str(),
            reason,
            detail = %detail,
            "message dead-lettered at apply"
        );
        let letter = DeadLetter {
            reason: reason.to_string(),
            key: Some(entry.message.run_id.clone()),
            value: None,
            timestamp: now,
            message_type: Some(entry.message.kind().as_str().to_string()),
            detail,
        };
        self.write_dead_letter(tx, entry.partition, entry.offset, &letter)?;
        outcome.dead_letters.push((index, reason));
        Ok(())
    }

    /// The dead-letter key of the record at `partition`/`offset`.
    pub fn dead_letter_key(&self, partition: i32, offset: i64) -> Vec<u8> {
        self.layout.ours.dead_letter(partition, offset)
    }

    /// Writes a dead letter (also for records that failed to decode, with their bytes) as the
    /// msgpack map `{"reason","key","value","timestamp","type","detail"}`; absent parts are nil.
    /// Whatever the record's size the letter stays bounded: a value longer than
    /// [`dead_letter::MAX_STORED_VALUE_BYTES`] keeps that prefix plus `truncated`, `value_len` and
    /// `value_sha256`, a key longer than [`dead_letter::MAX_STORED_KEY_BYTES`] is cut and its
    /// `key_len` kept (the stored format is documented in [`crate::ingest::dlq`]).
    pub fn write_dead_letter(
        &self,
        tx: &Transaction,
        partition: i32,
        offset: i64,
        letter: &DeadLetter,
    ) -> Result<(), ApplyError> {
        self.write_letter_at(tx, &self.dead_letter_key(partition, offset), letter)
    }

    /// Writes a dead letter of the control consumer (a record of `control-events`) under
    /// `("control_dlq", partition, offset)`, apart from the ingestion's, whose positions are of
    /// another topic; same format as [`Applier::write_dead_letter`].
    pub fn write_control_dead_letter(
        &self,
        tx: &Transaction,
        partition: i32,
        offset: i64,
        letter: &DeadLetter,
    ) -> Result<(), ApplyError> {
        self.write_letter_at(tx, &self.layout.ours.control_dead_letter(partition, offset), letter)
    }

    /// Lists the control consumer's dead letters in `(partition, offset)` order, at most `limit` (0: all).
    pub async fn control_dead_letters(
        &self,
        tx: &Transaction,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>, ApplyError> {
        let rows = self.list_positions(tx, CONTROL_DLQ, limit).await?;
        Ok(rows.into_iter().map(|(partition, offset, record)| DeadLetterRecord { partition, offset, record }).collect())
    }

    fn write_letter_at(&self, tx: &Transaction, at: &[u8], letter: &DeadLetter) -> Result<(), ApplyError> {
        let map = dead_letter::stored_value(letter);
        let bytes = value::encode(&map).map_err(|e| ApplyError::Corrupt(format!("dead letter: {e}")))?;
        tx.set(at, &bytes);
        Ok(())
    }

    /// Lists stored dead letters in `(partition, offset)` order, at most `limit` (0: all).
    pub async fn dead_letters(&self, tx: &Transaction, limit: usize) -> Result<Vec<DeadLetterRecord>, ApplyError> {
        let rows = self.list_positions(tx, DLQ, limit).await?;
        Ok(rows.into_iter().map(|(partition, offset, record)| DeadLetterRecord { partition, offset, record }).collect())
    }

    /// The outbox key of the record at `partition`/`offset`.
    pub fn outbox_key(&self, partition: i32, offset: i64) -> Vec<u8> {
        self.layout.ours.outbox(partition, offset)
    }

    /// Lists pending outbox events in `(partition, offset)` order, at most `limit` (0: all).
    pub async fn outbox(&self, tx: &Transaction, limit: usize) -> Result<Vec<OutboxEvent>, ApplyError> {
        let rows = self.list_positions(tx, OUTBOX, limit).await?;
        Ok(rows.into_iter().map(|(partition, offset, event)| OutboxEvent { partition, offset, event }).collect())
    }

    /// Removes an outbox event once it is published.
    pub fn remove_outbox(&self, tx: &Transaction, partition: i32, offset: i64) {
        tx.clear(&self.outbox_key(partition, offset));
    }

    async fn list_positions(
        &self,
        tx: &Transaction,
        tag: &'static str,
        limit: usize,
    ) -> Result<Vec<(i32, i64, Value)>, ApplyError> {
        let ours = &self.layout.ours;
        let (b, e) = ours.positions(tag);
        let mut out = Vec::new();
        for kv in tx.get_range(&RangeOption::new(b, e).limit(limit), false).await? {
            let (partition, offset) =
                ours.decode_position(tag, &kv.key).map_err(|e| ApplyError::Corrupt(e.to_string()))?;
            let v = value::decode(&kv.value).map_err(|e| ApplyError::Corrupt(format!("{tag} value: {e}")))?;
            out.push((partition, offset, v));
        }
        Ok(out)
    }

    /// Writes the `run_deleted` outbox event of a `delete_run` record, keyed by the record.
    async fn record_deleted(&self, tx: &Transaction, run: &str, entry: &Entry, now: f64) -> Result<(), ApplyError> {
        let event = run_deleted_event(run, now);
        let bytes = value::encode(&event).map_err(|e| ApplyError::Corrupt(format!("outbox event: {e}")))?;
        let at = OutboxAt::Record { partition: entry.partition, offset: entry.offset };
        self.layout.ours.put_outbox(tx, at, &bytes).await?;
        Ok(())
    }
}

/// The control event `{"type":"run_deleted","timestamp":…,"payload":{"run_id":R}}` (§1.5).
pub fn run_deleted_event(run: &str, now: f64) -> Value {
    control_event("run_deleted", "run_id", run, now)
}

/// A control event `{"type": kind, "timestamp": RFC 3339 of now, "payload": {payload_key: id}}`
/// (§1.5), as the outbox stores it for every kind.
pub fn control_event(kind: &str, payload_key: &str, id: &str, now: f64) -> Value {
    Value::Map(vec![
        (Value::from("type"), Value::from(kind)),
        (Value::from("timestamp"), Value::Str(rfc3339_utc(now))),
        (Value::from("payload"), Value::Map(vec![(Value::from(payload_key), Value::from(id))])),
    ])
}

impl Scope<'_> {
    async fn handle(
        &mut self,
        entry: &Entry,
        ids: &mut (dyn FnMut(&IdRequest<'_>) -> String + Send),
    ) -> Result<(), Fail> {
        match &entry.message.payload {
            Payload::CreateRun(p) => self.create_run(p).await,
            Payload::LogMetric(p) => self.log_metric(p).await,
            Payload::LogCustomObject(p) => self.log_custom_object(p).await,
            Payload::LogHparams(p) => self.log_hparams(p).await,
            Payload::FinishRun(p) => self.finish_run(p).await,
            Payload::SetRunProperty(p) => self.set_run_property(p, entry, ids).await,
            Payload::AddTag(p) => self.add_tag(p, entry, ids).await,
            Payload::RemoveTag(p) => self.remove_tag(p).await,
            Payload::LogTerminalLine(p) => self.log_terminal_line(p).await,
            Payload::LogRecord(p) => self.log_record(p).await,
            Payload::BlobRef(p) => self.blob_ref(p).await,
            Payload::DeleteRun => {
                // Pending trace info belongs to the run being deleted: write it before the clear.
                // Pending points would be cleared with the run: they are dropped unwritten.
                self.flush_traces()?;
                self.points.clear();
                self.point_slots.clear();
                self.layout.delete_run(self.tx, self.run, self.now).await?;
                Ok(())
            }
        }
    }

    /// Whether the run was created by `create_run` (or an auto-creating handler): its meta has
    /// `created_at`. A partial meta written by other handlers does not count.
    async fn established(&self) -> Result<bool, Fail> {
        Ok(self.layout.runs.runs.meta_field(self.tx, self.run, "created_at").await?.is_some())
    }

    async fn create_run(&mut self, p: &CreateRun) -> Result<(), Fail> {
        let runs = &self.layout.runs;
        if self.established().await? {
            // Resume, also without force_resume: a repeated create_run must not reset the run.
            runs.update_meta(
                self.tx,
                self.run,
                self.now,
                &[("active", Value::Bool(true)), ("finalized_at", Value::Nil)],
            )
            .await?;
            if let Some(ts) = p.client_datetime {
                runs.update_meta(self.tx, self.run, self.now, &[("client_start_ts", Value::Float(ts))]).await?;
            }
        } else {
            runs.create_run(self.tx, self.run, self.now, p.client_datetime).await?;
        }
        Ok(())
    }

    /// The auto-create of `set_run_property` and `add_tag`.
    async fn ensure_run(&mut self) -> Result<(), Fail> {
        if !self.established().await? {
            self.layout.runs.create_run(self.tx, self.run, self.now, None).await?;
        }
        Ok(())
    }

    /// Writes the context key once per transaction; `ctx_bytes` is its encoding.
    fn context(&mut self, ctx_id: u32, ctx_bytes: Option<&[u8]>) {
        if let Some(bytes) = ctx_bytes {
            let key = self.layout.runs.runs.key(self.run, &[Elem::from("contexts"), Elem::from(ctx_id)]);
            self.tx.set(&key, bytes);
            self.contexts.insert(ctx_id);
        }
    }

    /// Encodes the context unless this transaction already wrote it.
    fn context_bytes(&self, ctx_id: u32, ctx: &Value) -> Result<Option<Vec<u8>>, Fail> {
        if self.contexts.contains(&ctx_id) { Ok(None) } else { encode(ctx).map(Some) }
    }

    /// One point of a sequence plus its context and trace, all values encoded before any write.
    #[allow(clippy::too_many_arguments)]
    async fn write_point(
        &mut self,
        ctx_id: u32,
        ctx: &Value,
        name: &str,
        step: Option<i64>,
        epoch: Option<i64>,
        val: &Value,
        dtype: &str,
        last: Option<&Value>,
    ) -> Result<(), Fail> {
        let val_bytes = encode(val)?;
        // `last` is checked to encode before any write; a metric's is its value, encoded above.
        if let Some(last) = last.filter(|l| !std::ptr::eq(*l, val)) {
            encode(last)?;
        }
        let ctx_bytes = self.context_bytes(ctx_id, ctx)?;
        let slot = match self.point_slots.get(ctx_id, name) {
            Some(i) => i,
            None => {
                self.point_slots.insert(ctx_id, name, self.points.len());
                self.points.push(PendingPoints {
                    ctx_id,
                    name: name.to_string(),
                    rows: Vec::new(),
                    stored_last: None,
                    max_step: None,
                });
                self.points.len() - 1
            }
        };
        let step = match step {
            Some(s) => s,
            None => self.next_step(slot).await?,
        };
        self.context(ctx_id, ctx_bytes.as_deref());
        let pending = &mut self.points[slot];
        pending.rows.push((step, val_bytes, epoch, self.now));
        pending.max_step = Some(pending.max_step.map_or(step, |m| m.max(step)));
        self.pend_trace(ctx_id, name, dtype, last, step);
        Ok(())
    }

    /// `next_step` of the reference over what is stored and what this transaction wrote.
    async fn next_step(&mut self, slot: usize) -> Result<i64, Fail> {
        let stored = match self.points[slot].stored_last {
            Some(s) => s,
            None => {
                let p = &self.points[slot];
                let id = SeqId { run: self.run, ctx_id: p.ctx_id, name: &p.name };
                let s = self.layout.seqs.last_step(self.tx, id).await?;
                self.points[slot].stored_last = Some(s);
                s
            }
        };
        Ok(stored.max(self.points[slot].max_step).map_or(0, |s| s + 1))
    }

    /// Writes the pending points, one batch per sequence.
    async fn flush_points(&mut self) -> Result<(), Fail> {
        for p in self.points.drain(..) {
            let id = SeqId { run: self.run, ctx_id: p.ctx_id, name: &p.name };
            let writes: Vec<SeqWrite<'_>> = p
                .rows
                .iter()
                .map(|(step, val, epoch, time)| SeqWrite { step: *step, val, epoch: *epoch, time: *time })
                .collect();
            self.layout.seqs.write(self.tx, id, &writes).await?;
        }
        self.point_slots.clear();
        Ok(())
    }

    fn pend_trace(&mut self, ctx_id: u32, name: &str, dtype: &str, last: Option<&Value>, step: i64) {
        match self.trace_slots.get(ctx_id, name) {
            Some(i) => {
                let t = &mut self.traces[i];
                dtype.clone_into(&mut t.dtype);
                if let Some(last) = last {
                    t.last = Some(last.clone());
                }
                t.last_step = step;
            }
            None => {
                self.trace_slots.insert(ctx_id, name, self.traces.len());
                self.traces.push(PendingTrace {
                    ctx_id,
                    name: name.to_string(),
                    dtype: dtype.to_string(),
                    last: last.cloned(),
                    last_step: step,
                });
            }
        }
    }

    /// Writes the pending trace info and `("trace", name, R)` index entries.
    fn flush_traces(&mut self) -> Result<(), Fail> {
        for t in self.traces.drain(..) {
            let trace = TraceInfo {
                ctx_id: t.ctx_id,
                name: &t.name,
                dtype: &t.dtype,
                last: t.last.as_ref(),
                last_step: t.last_step,
            };
            self.layout.runs.record_trace(self.tx, self.run, &trace)?;
        }
        self.trace_slots.clear();
        Ok(())
    }

    async fn log_metric(&mut self, p: &LogMetric) -> Result<(), Fail> {
        // A null value (NaN/Inf at the gateway) is stored as nil and leaves `last` unchanged.
        let last = (!matches!(p.value, Value::Nil)).then_some(&p.value);
        self.write_point(p.context.id, &p.context.value, &p.name, p.step, p.epoch, &p.value, &p.dtype, last).await
    }

    async fn log_custom_object(&mut self, p: &LogCustomObject) -> Result<(), Fail> {
        let zero = Value::Float(0.0);
        self.write_point(p.context.id, &p.context.value, &p.name, p.step, p.epoch, &p.value, &p.dtype, Some(&zero))
            .await
    }

    async fn log_terminal_line(&mut self, p: &LogTerminalLine) -> Result<(), Fail> {
        let zero = Value::Float(0.0);
        let line = Value::from(p.line.as_str());
        self.write_point(0, &Value::Map(Vec::new()), "logs", Some(p.step), None, &line, "logs", Some(&zero)).await
    }

    async fn log_record(&mut self, p: &LogRecord) -> Result<(), Fail> {
        let zero = Value::Float(0.0);
        let record = Value::Map(vec![
            (Value::from("message"), Value::from(p.message.as_str())),
            (Value::from("log_level"), Value::Int(i128::from(p.level))),
            (Value::from("timestamp"), p.timestamp.clone()),
            (Value::from("args"), p.extra_args.clone().unwrap_or(Value::Nil)),
            (Value::from("logger_info"), p.logger_info.clone().unwrap_or(Value::Nil)),
        ]);
        // Always the automatic step, whatever the client sent.
        self.write_point(0, &Value::Map(Vec::new()), "__log_records", None, None, &record, "log_records", Some(&zero))
            .await
    }

    async fn set_attrs(&mut self, path: &[String], node: &Value) -> Result<(), Fail> {
        check_tree(path, node)?;
        self.layout.runs.set_attrs(self.tx, self.run, path, node, self.now).await?;
        Ok(())
    }

    async fn log_hparams(&mut self, p: &LogHparams) -> Result<(), Fail> {
        let Value::Map(entries) = &p.value else { return Ok(()) };
        if entries.is_empty() {
            return Ok(());
        }
        // Walk down single-key objects: {"hparams": {"lr": 0.01}} sets path ("hparams", "lr").
        let mut path = Vec::new();
        let mut node = &p.value;
        while let Value::Map(entries) = node {
            match entries.as_slice() {
                [(Value::Str(k), child)] => {
                    path.push(k.clone());
                    node = child;
                }
                _ => break,
            }
        }
        if path.is_empty() {
            // A multi-key top level: the reference calls set_attrs with an empty path, i.e. the
            // whole attrs tree.
            return self.set_attrs(&[], node).await;
        }
        self.set_attrs(&path, node).await
    }

    async fn blob_ref(&mut self, p: &BlobRef) -> Result<(), Fail> {
        let node = Value::Map(vec![
            (Value::from("s3_key"), Value::from(p.s3_key.as_str())),
            (Value::from("content_type"), Value::from(p.content_type.as_str())),
        ]);
        self.set_attrs(&["__blobs__".to_string(), p.artifact_path.clone()], &node).await
    }

    async fn finish_run(&mut self, p: &FinishRun) -> Result<(), Fail> {
        let runs = &self.layout.runs;
        let number = |v: Option<Value>| match v {
            Some(Value::Float(f)) => Some(f),
            Some(Value::Int(i)) => Some(i as f64),
            _ => None,
        };
        let start = number(runs.runs.meta_field(self.tx, self.run, "client_start_ts").await?);
        let duration = match (p.client_datetime, start) {
            (Some(finish), Some(start)) => Some((finish - start).max(0.0)),
            _ => None,
        };
        let finalized_at = match duration {
            Some(d) => number(runs.runs.meta_field(self.tx, self.run, "created_at").await?).unwrap_or(0.0) + d,
            None => self.now,
        };
        let fields = [
            ("active", Value::Bool(false)),
            ("finalized_at", Value::Float(finalized_at)),
            ("duration", duration.map_or(Value::Nil, Value::Float)),
        ];
        runs.update_meta(self.tx, self.run, self.now, &fields).await?;
        Ok(())
    }

    /// Finds the entity named `name` or creates it with an id from `ids`.
    async fn named(
        &self,
        kind: EntityKind,
        name: &str,
        entry: &Entry,
        ids: &mut (dyn FnMut(&IdRequest<'_>) -> String + Send),
    ) -> Result<String, Fail> {
        let system = &self.layout.system;
        if let Some(uuid) = system.uuid_by_name(self.tx, kind, name).await? {
            return Ok(uuid);
        }
        let uuid = ids(&IdRequest { kind, name, run: self.run, partition: entry.partition, offset: entry.offset });
        system.create_named(self.tx, kind, &uuid, name, self.now, &[]).await?;
        Ok(uuid)
    }

    async fn set_run_property(
        &mut self,
        p: &SetRunProperty,
        entry: &Entry,
        ids: &mut (dyn FnMut(&IdRequest<'_>) -> String + Send),
    ) -> Result<(), Fail> {
        self.ensure_run().await?;
        let mut fields: Vec<(&str, Value)> = Vec::new();
        if let Some(name) = &p.name {
            fields.push(("name", Value::from(name.as_str())));
        }
        if let Some(description) = &p.description {
            fields.push(("description", Value::from(description.as_str())));
        }
        if let Some(archived) = p.archived {
            fields.push(("is_archived", Value::Bool(archived)));
        }
        if !fields.is_empty() {
            self.layout.runs.update_meta(self.tx, self.run, self.now, &fields).await?;
        }
        if let Some(experiment) = &p.experiment {
            let uuid = self.named(EntityKind::Experiment, experiment, entry, ids).await?;
            self.layout.system.link_experiment(self.tx, self.layout.indexes(), self.run, Some(&uuid)).await?;
            let runs = &self.layout.runs.runs;
            runs.set_meta(self.tx, self.run, "experiment_id", &Value::from(uuid.as_str()))?;
            runs.set_meta(self.tx, self.run, "updated_at", &Value::Float(self.now))?;
        }
        Ok(())
    }

    async fn add_tag(
        &mut self,
        p: &TagChange,
        entry: &Entry,
        ids: &mut (dyn FnMut(&IdRequest<'_>) -> String + Send),
    ) -> Result<(), Fail> {
        self.ensure_run().await?;
        let tag = self.named(EntityKind::Tag, &p.tag_name, entry, ids).await?;
        self.layout.link_tag(self.tx, self.run, &tag).await?;
        Ok(())
    }

    async fn remove_tag(&mut self, p: &TagChange) -> Result<(), Fail> {
        let Some(tag) = self.layout.system.uuid_by_name(self.tx, EntityKind::Tag, &p.tag_name).await? else {
            tracing::warn!(run = %self.run, tag = %p.tag_name, "remove_tag of an unknown tag name ignored");
            return Ok(());
        };
        self.layout.unlink_tag(self.tx, self.run, &tag).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[tokio::test]
    async fn apply_futures_are_send_so_they_can_run_in_spawned_tasks() {
        let db = crate::storage::kv::Database::memory();
        let applier = Applier::new(Layout::open(&db).await.unwrap());
        let tx = db.create_trx().unwrap();
        let mut ids = |r: &IdRequest<'_>| position_uuid(r);
        let fut = applier.apply(&tx, "r", &[], 0.0, &mut ids);
        assert_send(&fut);
        assert_eq!(fut.await.unwrap().applied_total(), 0);
    }

    #[test]
    fn rfc3339_formats_utc_with_micros() {
        assert_eq!(rfc3339_utc(1_735_689_600.0), "2025-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(1_795_294_210.641_486), "2026-11-21T20:50:10.641486Z");
        assert_eq!(rfc3339_utc(0.0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(951_782_400.5), "2000-02-29T00:00:00.500000Z");
    }

    #[test]
    fn position_uuid_is_deterministic_and_position_bound() {
        let req = IdRequest { kind: EntityKind::Tag, name: "best", run: "r", partition: 1, offset: 7 };
        let a = position_uuid(&req);
        assert_eq!(a, position_uuid(&req));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "version nibble of a v4 layout: {a}");
        assert_ne!(a, position_uuid(&IdRequest { offset: 8, ..req }));
        assert_ne!(a, position_uuid(&IdRequest { kind: EntityKind::Experiment, ..req }));
    }
}
