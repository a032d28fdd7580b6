//! The embedded durable queue: a partitioned, offset-addressed topic stored in our own directory
//! of the transactional KV store, and [`EmbeddedSource`], the [`Source`] over it that
//! `matyan serve` consumes.
//!
//! # Key shapes
//!
//! Every key is ⟨ours⟩ (the `matyan_rs` directory prefix, [`Dirs::ours`]) followed by a packed
//! FDB tuple, built by [`Ours`] (`storage/layout/ours.rs`, which owns every key of ⟨ours⟩). Integer values are 8-byte little-endian `i64` (the encoding of FoundationDB's
//! atomic add), decoded strictly.
//!
//! | Key | Value |
//! |---|---|
//! | `("queue_meta", topic, "partitions")` | partition count, fixed when the topic is created |
//! | `("queue_end", topic, partition)` | the partition's end offset: the next offset to assign (absent = 0) |
//! | `("queue_start", topic, partition)` | the first offset not trimmed (absent = 0) |
//! | `("queue", topic, partition, offset, chunk)` | chunk `chunk` (0, 1, ...) of the record's frame |
//! | `("consumer", group, topic, partition)` | the group's committed offset: the next offset to read |
//!
//! A record's frame is `version (1) | flags (bit 0: key present) | timestamp_ms (i64 BE) |
//! key length (u32 BE) | value length (u32 BE) | key | value`, cut into chunks of at most the
//! store's value limit (100,000 bytes), so a record up to [`MAX_RECORD_BYTES`] fits under one
//! offset. Chunks of one record are written in one transaction, so a reader sees all or none.
//!
//! The record chunks are written, read once and trimmed, unlike the store's data: the queue asks
//! the store to keep each partition's chunks apart ([`Database::keep_apart`]; fjall gives every
//! partition a keyspace of its own in a store created since, so they are not compacted and cached
//! with the runs' data, and a partition's tables hold consecutive offsets).
//!
//! # Trimming
//!
//! A trim moves the partition's start offset in a transaction; reads never return offsets below
//! the start. Where the partition is kept apart, that transaction is all the trim does under the
//! order of commits: the chunks below the start are then forgotten ([`Database::forget_range`]),
//! which fjall does by dropping the partition's tables that lie wholly below the start, with no
//! read and no tombstone; what it cannot drop yet (the memtable, the table the start falls in)
//! goes at a later trim. Elsewhere (memory, redb, FoundationDB, and fjall stores whose queue
//! records were not kept apart per partition) the trim's transaction clears the chunks itself.
//! A trim stopped between the two leaves records below the start, which no read returns and the
//! next trim forgets.
//!
//! # Concurrency
//!
//! An append reads each touched partition's end key with a conflicting read, so two concurrent
//! appends to one partition conflict and the loser retries with the new end: offsets stay
//! contiguous, never lost or duplicated, across tasks and processes. Appends to different
//! partitions do not conflict. Readers use snapshot reads and never slow appenders down.
//!
//! The local backends (memory, fjall, redb) never report `commit_unknown_result`, so an append
//! there happens exactly once. On FoundationDB a retry after that error may append the batch a
//! second time, at new offsets (at least once, like a Kafka producer without idempotence).
//!
//! [`Dirs::ours`]: crate::storage::layout::Dirs::ours

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ingest::partitioner::partition_for_key;
use crate::ingest::source::{Backlog, Record, Source, SourceError};
use crate::storage::kv::{Database, RangeOption, RetryOptions, Transaction};
use crate::storage::layout::Ours;

/// The largest record (key plus value) the queue accepts: comfortably above the 4 MiB records the
/// gateway may produce, and small enough that one record and its chunk keys stay under
/// FoundationDB's 10 MB transaction limit.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of record values one [`Queue::read`] returns at most (at least one record is always
/// returned when one is available), so a read stays well inside the 5 s transaction lifetime.
pub const READ_BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// Partitions of a topic created without an explicit count: the reference's helm default for
/// `data-ingestion`, so runs land on the same partition numbers as on its Kafka topic.
pub const DEFAULT_PARTITIONS: u32 = 6;

/// The consumer group of the ingestion workers (the reference's name).
pub const INGESTION_GROUP: &str = "ingestion-workers";

const FRAME_VERSION: u8 = 1;
const FLAG_KEY: u8 = 1;
const FRAME_HEADER: usize = 1 + 1 + 8 + 4 + 4;
/// Bytes counted per chunk key on top of the frame, a generous bound of the packed key.
const KEY_OVERHEAD: usize = 64;

/// One record to append: `(key, value, timestamp_ms)`; a `None` key is Kafka's null key.
pub type AppendRecord<'a> = (Option<&'a [u8]>, &'a [u8], i64);

pub use super::source_error::QueueError;

fn corrupt(key: &[u8], reason: impl Into<String>) -> QueueError {
    QueueError::Corrupt { key: hex::encode(key), reason: reason.into() }
}

fn decode_i64(key: &[u8], value: &[u8]) -> Result<i64, QueueError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| corrupt(key, format!("expected an 8-byte integer, found {} bytes", value.len())))?;
    Ok(i64::from_le_bytes(bytes))
}

/// The retry options appends use by default: many quick retries, because concurrent appenders to
/// one partition conflict by design and one of them always wins each round.
pub fn default_append_retry() -> RetryOptions {
    RetryOptions {
        timeout: Duration::from_secs(30),
        retry_limit: 200,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(50),
    }
}

/// The retry of a queue handle under the configured `[storage.retry]`: its time budget, with the
/// many quick retries of [`default_append_retry`] (its few slow attempts would fail appenders
/// that lose a conflict round to each other).
pub fn append_retry(storage: &RetryOptions) -> RetryOptions {
    RetryOptions { timeout: storage.timeout, ..default_append_retry() }
}

struct Inner {
    db: Database,
    ours: Ours,
    topic: String,
    partitions: u32,
    /// Per partition: whether the store keeps its record chunks apart, so that a trim forgets them
    /// after its transaction instead of clearing them in it.
    apart: Vec<bool>,
    /// Signalled after every committed append of this process, to wake waiting polls.
    appended: Notify,
    /// Round-robin counter for keyless appends.
    next_keyless: AtomicU32,
}

/// What [`Queue::trim_consumed`] read and did on one partition, all in its one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionTrim {
    /// The start offset before the trim.
    pub before: i64,
    /// The start offset after it; `None` when no group has committed on the partition.
    pub start: Option<i64>,
    /// The end offset.
    pub end: i64,
    /// Whether the trim went as far as the groups' offsets and the retention allow (else it
    /// stopped at its record budget and another trim goes further).
    pub complete: bool,
}

impl PartitionTrim {
    /// Records the trim removed.
    pub fn trimmed(&self) -> u64 {
        self.start.map_or(0, |s| u64::try_from(s - self.before).unwrap_or(0))
    }

    /// Records the partition still holds.
    pub fn held(&self) -> u64 {
        u64::try_from(self.end - self.start.unwrap_or(self.before)).unwrap_or(0)
    }
}

/// A handle on one topic of the embedded queue. Cheap to clone; clones share the in-process
/// append notification.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    retry: RetryOptions,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("topic", &self.inner.topic).field("partitions", &self.inner.partitions).finish()
    }
}

impl Queue {
    /// Opens `topic` under the directory prefix `ours`, creating it with `partitions` partitions
    /// if it does not exist.
    ///
    /// Fails with [`QueueError::PartitionMismatch`] when the topic exists with another count.
    pub async fn open(db: &Database, ours: &[u8], topic: &str, partitions: u32) -> Result<Self, QueueError> {
        if partitions == 0 || partitions > i32::MAX as u32 {
            return Err(QueueError::InvalidPartitionCount { topic: topic.to_owned(), requested: partitions });
        }
        let key = Ours::new(ours).queue_meta(topic);
        let key_ref = &key;
        let stored = db
            .run(&RetryOptions::default(), move |tx| async move {
                match tx.get(key_ref, false).await? {
                    Some(v) => Ok::<_, QueueError>(Some(decode_i64(key_ref, &v)?)),
                    None => {
                        tx.set(key_ref, &i64::from(partitions).to_le_bytes());
                        Ok(None)
                    }
                }
            })
            .await?;
        match stored {
            None => {}
            Some(n) if n == i64::from(partitions) => {}
            Some(n) => {
                let stored = u32::try_from(n).map_err(|_| corrupt(&key, format!("partition count {n}")))?;
                return Err(QueueError::PartitionMismatch { topic: topic.to_owned(), stored, requested: partitions });
            }
        }
        Self::handle(db, ours, topic, partitions)
    }

    /// Opens `topic` if it exists, with its stored partition count.
    pub async fn open_existing(db: &Database, ours: &[u8], topic: &str) -> Result<Option<Self>, QueueError> {
        let key = Ours::new(ours).queue_meta(topic);
        let key_ref = &key;
        let stored = db
            .run(&RetryOptions::default(), move |tx| async move {
                tx.get(key_ref, true).await?.map(|v| decode_i64(key_ref, &v)).transpose()
            })
            .await?;
        match stored {
            None => Ok(None),
            Some(n) => {
                let partitions = u32::try_from(n)
                    .ok()
                    .filter(|p| (1..=i32::MAX as u32).contains(p))
                    .ok_or_else(|| corrupt(&key, format!("partition count {n}")))?;
                Ok(Some(Self::handle(db, ours, topic, partitions)?))
            }
        }
    }

    /// The names of every topic of the queue under `ours`, in key order.
    pub async fn topics(db: &Database, ours: &[u8]) -> Result<Vec<String>, QueueError> {
        let ours = &Ours::new(ours);
        db.run(&RetryOptions::default(), move |tx| async move {
            let (begin, end) = ours.queue_metas();
            // One key per topic: a handful, read in one go.
            let pairs = tx.get_range(&RangeOption::new(begin, end), true).await?;
            pairs
                .iter()
                .map(|kv| ours.decode_queue_meta(&kv.key).map_err(|e| corrupt(&kv.key, e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    /// The handle, once the store was asked to keep each partition's record chunks apart (before
    /// the first of them is written; a no-op once done, refused where the store cannot or already
    /// holds them with other keys, as a store created before does).
    fn handle(db: &Database, ours: &[u8], topic: &str, partitions: u32) -> Result<Self, QueueError> {
        let ours = Ours::new(ours);
        let apart = (0..partitions)
            .map(|p| {
                let p = i32::try_from(p).unwrap_or(i32::MAX);
                db.keep_apart(&ours.queue_partition_prefix(topic, p))
            })
            .collect::<Result<Vec<bool>, _>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                ours,
                topic: topic.to_owned(),
                partitions,
                apart,
                appended: Notify::new(),
                next_keyless: AtomicU32::new(0),
            }),
            retry: default_append_retry(),
        })
    }

    /// Replaces the retry options of this handle's appends, reads, commits and trims.
    pub fn with_retry(mut self, retry: RetryOptions) -> Self {
        self.retry = retry;
        self
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    /// Lists the topic's partitions: `0..partitions`.
    pub fn partition_ids(&self) -> Vec<i32> {
        (0..self.inner.partitions).filter_map(|p| i32::try_from(p).ok()).collect()
    }

    /// Returns the partition of a keyed record: Kafka's default partitioner (murmur2), so a run
    /// lands on the same partition number as on a Kafka topic with as many partitions.
    pub fn partition_for_key(&self, key: &[u8]) -> i32 {
        // `open` guarantees 1 <= partitions <= i32::MAX, so both conversions succeed.
        partition_for_key(key, self.inner.partitions).and_then(|p| i32::try_from(p).ok()).unwrap_or(0)
    }

    /// Returns the bytes an append of this record counts against the transaction limit.
    pub fn append_cost(&self, key: Option<&[u8]>, value: &[u8]) -> usize {
        let frame = FRAME_HEADER + key.map_or(0, <[u8]>::len) + value.len();
        let chunks = frame.div_ceil(self.chunk_bytes()).max(1);
        frame + chunks * (KEY_OVERHEAD + self.inner.topic.len())
    }

    fn chunk_bytes(&self) -> usize {
        self.inner.db.limits().max_value_bytes.max(1)
    }

    /// Appends records `(key, value, timestamp_ms)` in one transaction and returns each one's
    /// `(partition, offset)`, in input order.
    ///
    /// Keyed records go to Kafka's murmur2 partition of their key. The keyless records of one
    /// call all go to one partition, chosen round-robin per call (as Kafka's sticky
    /// partitioner does per batch). Records of one partition get consecutive offsets in input
    /// order. The whole append commits or nothing does; the caller keeps the sum of
    /// [`Queue::append_cost`] under the transaction limit ([`QueueError::BatchTooLarge`]).
    pub async fn append(&self, records: &[AppendRecord<'_>]) -> Result<Vec<(i32, i64)>, QueueError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.inner.db.limits().max_txn_bytes;
        let mut total = 0usize;
        for (key, value, _) in records {
            let size = key.map_or(0, <[u8]>::len) + value.len();
            if size > MAX_RECORD_BYTES {
                return Err(QueueError::RecordTooLarge { size, limit: MAX_RECORD_BYTES });
            }
            total += self.append_cost(*key, value);
        }
        if total > limit {
            return Err(QueueError::BatchTooLarge { size: total, limit });
        }
        // Everything the body needs is computed before the retry loop, so every attempt writes
        // the same records to the same partitions.
        let keyless = if records.iter().any(|(k, _, _)| k.is_none()) {
            let n = self.inner.next_keyless.fetch_add(1, Ordering::Relaxed) % self.inner.partitions;
            i32::try_from(n).unwrap_or(0)
        } else {
            0
        };
        let placed: Vec<i32> =
            records.iter().map(|(k, _, _)| k.map_or(keyless, |k| self.partition_for_key(k))).collect();
        let frames: Vec<Vec<u8>> = records.iter().map(|(k, v, ts)| encode_frame(*k, v, *ts)).collect();
        let (placed, frames, this) = (&placed, &frames, self);
        let out = self
            .inner
            .db
            .run(&self.retry, move |tx| async move {
                let mut ends = BTreeMap::new();
                for &p in placed {
                    if let std::collections::btree_map::Entry::Vacant(e) = ends.entry(p) {
                        e.insert(this.read_counter(&tx, &this.end_key(p), false).await?);
                    }
                }
                let mut out = Vec::with_capacity(placed.len());
                for (&p, frame) in placed.iter().zip(frames) {
                    let end = ends.entry(p).or_insert(0);
                    let offset = *end;
                    *end += 1;
                    for (chunk, piece) in frame.chunks(this.chunk_bytes()).enumerate() {
                        tx.set(&this.record_key(p, offset, chunk), piece);
                    }
                    out.push((p, offset));
                }
                for (p, end) in ends {
                    tx.set(&this.end_key(p), &end.to_le_bytes());
                }
                Ok::<_, QueueError>(out)
            })
            .await?;
        self.inner.appended.notify_waiters();
        Ok(out)
    }

    /// Reads up to `max` records of `partition` from offset `from`, in offset order, in one
    /// snapshot. Stops early after [`READ_BYTE_BUDGET`] bytes of values (never before the first
    /// record). Offsets below the partition's start (trimmed) are skipped: the read starts at the
    /// start offset of its snapshot, so it never meets records a trim has forgotten but the store
    /// has not freed yet.
    pub async fn read(&self, partition: i32, from: i64, max: usize) -> Result<Vec<Record>, QueueError> {
        self.check_partition(partition)?;
        if from < 0 {
            return Err(QueueError::InvalidOffset { offset: from });
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        let this = self;
        self.inner.db.run(&self.retry, move |tx| async move { this.read_in(&tx, partition, from, max).await }).await
    }

    async fn read_in(
        &self,
        tx: &Transaction,
        partition: i32,
        from: i64,
        max: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let ours = &self.inner.ours;
        let from = from.max(self.read_counter(tx, &self.start_key(partition), true).await?);
        let (_, end) = ours.queue_partition(&self.inner.topic, partition);
        let base = ours.queue_partition_prefix(&self.inner.topic, partition);
        let mut cursor = ours.queue_offset(&self.inner.topic, partition, from);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        // The record being assembled: its offset and its frame so far (a one-chunk record's frame
        // is its value, moved, not copied).
        let mut current: Option<(i64, Vec<u8>)> = None;
        let mut next_chunk = 0i64;
        let finish = |offset: i64, frame: Vec<u8>| {
            decode_frame(frame, partition, offset).map_err(|reason| {
                corrupt(&self.record_key(partition, offset, 0), format!("bad record frame: {reason}"))
            })
        };
        'pages: loop {
            let limit = (max - records.len()).clamp(16, 1000);
            let page = tx.get_range(&RangeOption::new(cursor.clone(), end.clone()).limit(limit), true).await?;
            let full = page.len() == limit;
            if let Some(last) = page.last().filter(|_| full) {
                cursor.clone_from(&last.key);
                cursor.push(0);
            }
            for kv in page {
                let (offset, chunk) =
                    ours.decode_queue_record(&base, &kv.key).map_err(|e| corrupt(&kv.key, e.to_string()))?;
                let same = current.as_ref().is_some_and(|(o, _)| *o == offset);
                if !same {
                    if let Some((o, frame)) = current.take() {
                        let record = finish(o, frame)?;
                        bytes += record.value.len();
                        records.push(record);
                    }
                    if records.len() >= max || bytes >= READ_BYTE_BUDGET {
                        break 'pages;
                    }
                    if chunk != 0 {
                        return Err(corrupt(&kv.key, "record does not start at chunk 0"));
                    }
                    current = Some((offset, kv.value));
                    next_chunk = 1;
                    continue;
                }
                if chunk != next_chunk {
                    return Err(corrupt(&kv.key, format!("expected chunk {next_chunk}")));
                }
                next_chunk += 1;
                if let Some((_, frame)) = current.as_mut() {
                    frame.extend_from_slice(&kv.value);
                }
            }
            if !full {
                if let Some((o, frame)) = current.take() {
                    records.push(finish(o, frame)?);
                }
                break;
            }
        }
        Ok(records)
    }

    /// Returns the end offset of `partition`: the offset the next appended record gets.
    pub async fn end_offset(&self, partition: i32) -> Result<i64, QueueError> {
        self.check_partition(partition)?;
        let key = self.end_key(partition);
        self.read_counter_txn(&key).await
    }

    /// Returns, for every partition in order, `group`'s backlog read in one snapshot: the end
    /// offset and the committed offset (the start offset when the group never committed or its
    /// offset was trimmed away, where [`EmbeddedSource`] starts).
    pub async fn backlog(&self, group: &str) -> Result<Vec<Backlog>, QueueError> {
        let this = self;
        self.inner
            .db
            .run(&self.retry, move |tx| async move {
                let mut out = Vec::with_capacity(this.inner.partitions as usize);
                for partition in this.partition_ids() {
                    let end = this.read_counter(&tx, &this.end_key(partition), true).await?;
                    let start = this.read_counter(&tx, &this.start_key(partition), true).await?;
                    let key = this.consumer_key(group, partition);
                    let committed = match tx.get(&key, true).await? {
                        Some(v) => decode_i64(&key, &v)?,
                        None => 0,
                    };
                    out.push(Backlog { partition, end, committed: committed.max(start) });
                }
                Ok::<_, QueueError>(out)
            })
            .await
    }

    /// Returns the first offset of `partition` that is not trimmed.
    pub async fn start_offset(&self, partition: i32) -> Result<i64, QueueError> {
        self.check_partition(partition)?;
        let key = self.start_key(partition);
        self.read_counter_txn(&key).await
    }

    /// Records `next_offset` (the next offset to read, as in Kafka) as `group`'s committed offset
    /// of `partition`. It may move backwards (a replay); it may not pass the end offset.
    pub async fn commit(&self, group: &str, partition: i32, next_offset: i64) -> Result<(), QueueError> {
        self.check_partition(partition)?;
        if next_offset < 0 {
            return Err(QueueError::InvalidOffset { offset: next_offset });
        }
        let key = self.consumer_key(group, partition);
        let end_key = self.end_key(partition);
        let (this, key, end_key) = (self, &key, &end_key);
        self.inner
            .db
            .run(&self.retry, move |tx| async move {
                // A snapshot read: committing must not conflict with appenders, and the end only grows.
                let end = this.read_counter(&tx, end_key, true).await?;
                if next_offset > end {
                    return Err(QueueError::OffsetPastEnd { partition, offset: next_offset, end });
                }
                tx.set(key, &next_offset.to_le_bytes());
                Ok(())
            })
            .await
    }

    /// Returns `group`'s committed offset of `partition`, `None` when it never committed.
    pub async fn committed(&self, group: &str, partition: i32) -> Result<Option<i64>, QueueError> {
        self.check_partition(partition)?;
        let key = self.consumer_key(group, partition);
        let key = &key;
        self.inner
            .db
            .run(
                &self.retry,
                move |tx| async move { tx.get(key, true).await?.map(|v| decode_i64(key, &v)).transpose() },
            )
            .await
    }

    /// Deletes the records of `partition` below offset `below` (clamped to the end offset) in one
    /// transaction (see the module's Trimming), and returns the new start offset. Offsets are
    /// never reused: the end offset is unchanged. Trimming below the current start does nothing.
    pub async fn trim(&self, partition: i32, below: i64) -> Result<i64, QueueError> {
        self.check_partition(partition)?;
        if below < 0 {
            return Err(QueueError::InvalidOffset { offset: below });
        }
        let (start_key, end_key) = (self.start_key(partition), self.end_key(partition));
        let (this, start_key, end_key) = (self, &start_key, &end_key);
        let start = self
            .inner
            .db
            .run(&self.retry, move |tx| async move {
                let start = this.read_counter(&tx, start_key, false).await?;
                // Records appended concurrently land at or above the end read here, which is at or
                // above the cleared range: a snapshot read is enough.
                let end = this.read_counter(&tx, end_key, true).await?;
                let new_start = below.min(end);
                if new_start <= start {
                    return Ok(start);
                }
                this.clear_between(&tx, partition, start, new_start);
                tx.set(start_key, &new_start.to_le_bytes());
                Ok::<_, QueueError>(new_start)
            })
            .await?;
        self.forget_below(partition, start).await?;
        Ok(start)
    }

    /// Trims the records of `partition` that every consumer group of this topic has committed,
    /// keeping the last `retain` of them and removing at most `max_records` (at least 1), and says
    /// what it found and did in that one transaction: the start offset before and after, the end
    /// offset, and whether it went all the way. The new start is `None` when no group has
    /// committed on the partition (nothing is known to be consumed, so nothing goes).
    ///
    /// The budget keeps each trim's transaction short where it clears the records itself (a
    /// partition not kept apart, see the module's Trimming): an embedded store removes a cleared
    /// range key by key while it holds the commit order, and a trim of 200,000 records held every
    /// other commit back for seconds (the ingest pipeline's records in flight then piled up to
    /// 650 MiB, `matyan bench ingest --records 3000000`). A partition kept apart is trimmed as far
    /// as allowed in one transaction, which writes only the start offset.
    ///
    /// The committed offsets are read with conflicting reads in the trimming transaction: a
    /// group rewinding its offset at the same time makes one of the two retry, so a replay never
    /// finds its records trimmed under it. A group that has never committed on this topic is not
    /// known here: start a new group's consumer (which commits its start) before trimming.
    ///
    /// An error after the transaction committed (the store failed to forget the records below the
    /// start) leaves the start moved and the records for the next trim to forget.
    pub async fn trim_consumed(
        &self,
        partition: i32,
        retain: u64,
        max_records: u64,
    ) -> Result<PartitionTrim, QueueError> {
        self.check_partition(partition)?;
        let retain = i64::try_from(retain).unwrap_or(i64::MAX);
        let step =
            if self.is_apart(partition) { i64::MAX } else { i64::try_from(max_records.max(1)).unwrap_or(i64::MAX) };
        let (start_key, end_key) = (self.start_key(partition), self.end_key(partition));
        let (this, start_key, end_key) = (self, &start_key, &end_key);
        let trim = self
            .inner
            .db
            .run(&self.retry, move |tx| async move {
                let before = this.read_counter(&tx, start_key, false).await?;
                let end = this.read_counter(&tx, end_key, true).await?;
                let Some(consumed) = this.slowest_committed(&tx, partition).await? else {
                    return Ok(PartitionTrim { before, start: None, end, complete: true });
                };
                let wanted = consumed.min(end).saturating_sub(retain);
                if wanted <= before {
                    return Ok(PartitionTrim { before, start: Some(before), end, complete: true });
                }
                let new_start = wanted.min(before.saturating_add(step));
                this.clear_between(&tx, partition, before, new_start);
                tx.set(start_key, &new_start.to_le_bytes());
                Ok::<_, QueueError>(PartitionTrim {
                    before,
                    start: Some(new_start),
                    end,
                    complete: new_start == wanted,
                })
            })
            .await?;
        self.forget_below(partition, trim.start.unwrap_or(trim.before)).await?;
        Ok(trim)
    }

    /// The smallest offset any group has committed on `partition` of this topic, read with
    /// conflicting reads; `None` when none has.
    async fn slowest_committed(&self, tx: &Transaction, partition: i32) -> Result<Option<i64>, QueueError> {
        let ours = &self.inner.ours;
        let (mut from, end) = ours.consumers();
        let mut slowest: Option<i64> = None;
        loop {
            let page = tx.get_range(&RangeOption::new(from.clone(), end.clone()).limit(1000), false).await?;
            for kv in &page {
                let (_, topic, p) = ours.decode_consumer(&kv.key).map_err(|e| corrupt(&kv.key, e.to_string()))?;
                if topic == self.inner.topic && p == partition {
                    let offset = decode_i64(&kv.key, &kv.value)?;
                    slowest = Some(slowest.map_or(offset, |s| s.min(offset)));
                }
            }
            match page.last() {
                Some(last) if page.len() == 1000 => {
                    from = last.key.clone();
                    from.push(0x00);
                }
                _ => return Ok(slowest),
            }
        }
    }

    /// Whether the store keeps the record chunks of `partition` (checked) apart.
    fn is_apart(&self, partition: i32) -> bool {
        usize::try_from(partition).ok().and_then(|p| self.inner.apart.get(p)).copied().unwrap_or(false)
    }

    /// Forgets every record chunk of `partition` below offset `start`, its start offset, where the
    /// partition is kept apart (elsewhere the trim's transaction cleared them). From the
    /// partition's first key every time: what an earlier forget could not free yet, or a trim
    /// stopped before its forget left, goes as soon as the store can drop it, and a drop reads
    /// nothing, so the range's length costs nothing.
    async fn forget_below(&self, partition: i32, start: i64) -> Result<(), QueueError> {
        if !self.is_apart(partition) || start <= 0 {
            return Ok(());
        }
        let ours = &self.inner.ours;
        let (begin, _) = ours.queue_partition(&self.inner.topic, partition);
        let end = ours.queue_offset(&self.inner.topic, partition, start);
        Ok(self.inner.db.forget_range(&begin, &end).await?)
    }

    /// Clears the records of `partition` from offset `start` (the partition's start offset: every
    /// trim cleared what lies below it in the transaction that moved it) to offset `below`, unless
    /// the partition is kept apart (its records are forgotten after the transaction).
    ///
    /// Not from the partition's first key: an embedded store reads a cleared range key by key under
    /// the commit order, and from the first key that read went through the tombstones of every
    /// earlier trim not yet compacted away. Measured (`perf record` of `matyan bench ingest
    /// --records 3000000 --layout chunked --trim-interval-ms 10000`): half of the process's
    /// samples were in that read.
    fn clear_between(&self, tx: &Transaction, partition: i32, start: i64, below: i64) {
        if self.is_apart(partition) {
            return;
        }
        let ours = &self.inner.ours;
        let topic = &self.inner.topic;
        tx.clear_range(&ours.queue_offset(topic, partition, start), &ours.queue_offset(topic, partition, below));
    }

    /// Resolves when a record is appended through a handle of this queue in this process.
    /// Appends by other processes are not signalled; callers also poll.
    pub(crate) fn appended(&self) -> &Notify {
        &self.inner.appended
    }

    fn check_partition(&self, partition: i32) -> Result<(), QueueError> {
        if u32::try_from(partition).is_ok_and(|p| p < self.inner.partitions) {
            Ok(())
        } else {
            Err(QueueError::PartitionOutOfRange {
                topic: self.inner.topic.clone(),
                partition,
                partitions: self.inner.partitions,
            })
        }
    }

    async fn read_counter(&self, tx: &Transaction, key: &[u8], snapshot: bool) -> Result<i64, QueueError> {
        match tx.get(key, snapshot).await? {
            Some(v) => decode_i64(key, &v),
            None => Ok(0),
        }
    }

    async fn read_counter_txn(&self, key: &[u8]) -> Result<i64, QueueError> {
        let this = self;
        self.inner.db.run(&self.retry, move |tx| async move { this.read_counter(&tx, key, true).await }).await
    }

    fn record_key(&self, partition: i32, offset: i64, chunk: usize) -> Vec<u8> {
        self.inner.ours.queue_record(&self.inner.topic, partition, offset, chunk)
    }

    fn end_key(&self, partition: i32) -> Vec<u8> {
        self.inner.ours.queue_end(&self.inner.topic, partition)
    }

    fn start_key(&self, partition: i32) -> Vec<u8> {
        self.inner.ours.queue_start(&self.inner.topic, partition)
    }

    fn consumer_key(&self, group: &str, partition: i32) -> Vec<u8> {
        self.inner.ours.consumer(group, &self.inner.topic, partition)
    }
}

fn encode_frame(key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) -> Vec<u8> {
    let key_bytes = key.unwrap_or_default();
    let mut frame = Vec::with_capacity(FRAME_HEADER + key_bytes.len() + value.len());
    frame.push(FRAME_VERSION);
    frame.push(if key.is_some() { FLAG_KEY } else { 0 });
    frame.extend_from_slice(&timestamp_ms.to_be_bytes());
    // `append` bounds both lengths by MAX_RECORD_BYTES, far below u32::MAX.
    frame.extend_from_slice(&u32::try_from(key_bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(key_bytes);
    frame.extend_from_slice(value);
    frame
}

/// Decodes a record's whole frame; the value keeps the frame's allocation (the header and key
/// are shifted out). An error is what is wrong with the frame, for the caller to name the
/// record's key.
fn decode_frame(mut frame: Vec<u8>, partition: i32, offset: i64) -> Result<Record, &'static str> {
    let header: &[u8; FRAME_HEADER] =
        frame.get(..FRAME_HEADER).and_then(|h| h.try_into().ok()).ok_or("shorter than its header")?;
    if header[0] != FRAME_VERSION {
        return Err("unknown version");
    }
    let flags = header[1];
    if flags & !FLAG_KEY != 0 {
        return Err("unknown flags");
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[2..10]);
    let mut kl = [0u8; 4];
    kl.copy_from_slice(&header[10..14]);
    let mut vl = [0u8; 4];
    vl.copy_from_slice(&header[14..18]);
    let (key_len, value_len) = (u32::from_be_bytes(kl) as usize, u32::from_be_bytes(vl) as usize);
    if frame.len() - FRAME_HEADER != key_len + value_len {
        return Err("lengths do not match its size");
    }
    if flags & FLAG_KEY == 0 && key_len != 0 {
        return Err("a null key with a length");
    }
    let key = (flags & FLAG_KEY != 0).then(|| frame[FRAME_HEADER..FRAME_HEADER + key_len].to_vec());
    frame.drain(..FRAME_HEADER + key_len);
    Ok(Record { partition, offset, key, value: frame, timestamp_ms: i64::from_be_bytes(ts) })
}

/// Read positions and paused partitions of an [`EmbeddedSource`].
#[derive(Debug, Default)]
struct SourceState {
    positions: BTreeMap<i32, i64>,
    paused: BTreeSet<i32>,
    /// Partition index the next poll starts at, so one busy partition cannot starve the others.
    rotate: usize,
}

/// The [`Source`] over the embedded queue: the single consumer of its group, so every partition
/// is assigned to it. Polls wait for appends of this process through a notification and check
/// the store every `poll_interval` for appends by other processes.
pub struct EmbeddedSource {
    queue: Queue,
    group: String,
    partitions: Vec<i32>,
    poll_interval: Duration,
    state: parking_lot::Mutex<SourceState>,
}

impl std::fmt::Debug for EmbeddedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSource").field("queue", &self.queue).field("group", &self.group).finish()
    }
}

impl EmbeddedSource {
    /// Opens the source of `group` on `queue`, starting each partition at the group's committed
    /// offset, or at the partition's start when it has none or it was trimmed away (Kafka's
    /// `auto_offset_reset=earliest`).
    pub async fn new(queue: Queue, group: &str) -> Result<Self, QueueError> {
        let partitions = queue.partition_ids();
        let mut positions = BTreeMap::new();
        for &p in &partitions {
            let start = queue.start_offset(p).await?;
            let committed = queue.committed(group, p).await?.unwrap_or(0);
            positions.insert(p, committed.max(start));
        }
        Ok(Self {
            queue,
            group: group.to_owned(),
            partitions,
            poll_interval: Duration::from_millis(100),
            state: parking_lot::Mutex::new(SourceState { positions, ..SourceState::default() }),
        })
    }

    /// Sets how often a waiting poll checks the store for appends of other processes.
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// The queue this source reads.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Returns the next offset the source reads from `partition`.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.state.lock().positions.get(&partition).copied()
    }

    fn check_assigned(&self, partition: i32) -> Result<(), SourceError> {
        if self.partitions.contains(&partition) { Ok(()) } else { Err(SourceError::NotAssigned { partition }) }
    }

    async fn read_available(&self, max_records: usize) -> Result<Vec<Record>, SourceError> {
        let plan: Vec<(i32, i64)> = {
            let mut st = self.state.lock();
            let n = self.partitions.len();
            let first = st.rotate % n.max(1);
            st.rotate = st.rotate.wrapping_add(1);
            (0..n)
                .map(|i| self.partitions[(first + i) % n])
                .filter(|p| !st.paused.contains(p))
                .filter_map(|p| st.positions.get(&p).map(|&pos| (p, pos)))
                .collect()
        };
        let mut out = Vec::new();
        for (p, from) in plan {
            let room = max_records - out.len();
            if room == 0 {
                break;
            }
            let records = self.queue.read(p, from, room).await?;
            let Some(last) = records.last() else { continue };
            let next = last.offset + 1;
            let mut st = self.state.lock();
            // A seek while reading wins: drop what was read from the old position.
            if st.positions.get(&p) == Some(&from) {
                st.positions.insert(p, next);
                drop(st);
                out.extend(records);
            }
        }
        Ok(out)
    }
}

impl Source for EmbeddedSource {
    async fn poll(&self, max_records: usize, timeout: Duration) -> Result<Vec<Record>, SourceError> {
        if max_records == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before reading, so an append between the read and the wait still wakes us.
            let notified = self.queue.appended().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let records = self.read_available(max_records).await?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(records);
            }
            let wait = (deadline - now).min(self.poll_interval);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn commit(&self, partition: i32, next_offset: i64) -> Result<(), SourceError> {
        self.check_assigned(partition)?;
        if next_offset < 0 {
            return Err(SourceError::InvalidOffset { partition, offset: next_offset });
        }
        Ok(self.queue.commit(&self.group, partition, next_offset).await?)
    }

    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.check_assigned(partition)?;
        if offset < 0 {
            return Err(SourceError::InvalidOffset { partition, offset });
        }
        self.state.lock().positions.insert(partition, offset);
        Ok(())
    }

    fn assignment(&self) -> Vec<i32> {
        self.partitions.clone()
    }

    fn pause(&self, partition: i32) -> Result<(), SourceError> {
        self.check_assigned(partition)?;
        self.state.lock().paused.insert(partition);
        Ok(())
    }

    fn resume(&self, partition: i32) -> Result<(), SourceError> {
        self.check_assigned(partition)?;
        self.state.lock().paused.remove(&partition);
        Ok(())
    }

    async fn backlog(&self) -> Result<Vec<Backlog>, SourceError> {
        Ok(self.queue.backlog(&self.group).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_handle_retries_within_the_configured_time_budget_with_quick_rounds() {
        let storage = RetryOptions { timeout: Duration::from_secs(7), ..RetryOptions::default() };
        let retry = append_retry(&storage);
        assert_eq!(retry.timeout, Duration::from_secs(7), "[storage.retry] timeout_ms");
        assert_eq!((retry.retry_limit, retry.max_backoff), (200, Duration::from_millis(50)), "contention rounds");
    }

    #[test]
    fn frames_round_trip_with_and_without_key() {
        let f = encode_frame(Some(b"run"), b"{\"a\":1}", -5);
        let r = decode_frame(f, 2, 7).unwrap();
        assert_eq!(
            r,
            Record {
                partition: 2,
                offset: 7,
                key: Some(b"run".to_vec()),
                value: b"{\"a\":1}".to_vec(),
                timestamp_ms: -5
            }
        );
        let f = encode_frame(None, b"", 1);
        assert_eq!(decode_frame(f, 0, 0).unwrap().key, None);
        let f = encode_frame(Some(b""), b"v", 1);
        assert_eq!(decode_frame(f, 0, 0).unwrap().key, Some(Vec::new()));
    }

    #[test]
    fn frames_are_decoded_strictly() {
        let f = encode_frame(Some(b"run"), b"value", 0);
        assert!(decode_frame(f[..f.len() - 1].to_vec(), 0, 0).is_err());
        assert!(decode_frame(f[..5].to_vec(), 0, 0).is_err());
        let mut bad = f.clone();
        bad[0] = 9;
        assert!(decode_frame(bad, 0, 0).is_err());
        let mut bad = f;
        bad[1] = 2;
        assert!(decode_frame(bad, 0, 0).is_err());
    }
}
